#!/usr/bin/python3
"""Reproducible flag sets for bench/flags: an Unleash client-features state
(`{"version": 2, "features": [...], "segments": [...]}`) for
`POST /api/admin/state/import`.

    genflags.py small|large [SEED]  > state.json

`small`: 5 flags (about 2 kB of client-API JSON), one of each common shape.
`large`: 350 flags over 200 strategies (about 116 kB), the shape of the data
set Unleash Edge's published benchmark used (the Unleash demo instance: 350
flags, 200 strategies, about 100 kB). Most flags have no strategy; the others
have `flexibleRollout` (rollout, stickiness, groupId), `default` or
`userWithId` strategies with constraints over the common operators (IN,
NOT_IN, STR_CONTAINS, STR_STARTS_WITH, NUM_GT, NUM_LTE, DATE_AFTER,
DATE_BEFORE, SEMVER_EQ, SEMVER_GT), some inverted or case-insensitive; some
strategies reference segments; some strategies and flags have variants with
payloads.

Every flag is in project `default`, so the admin on/off endpoints reach it.
Both sets contain `kill-switch` (on, `default` strategy): the flag the
propagation measurement flips. Segments carry no `name` and strategy variants
no `weightType`: Unleash's client API has both, but the import rejects fields
the server's model would drop.
"""

import json
import random
import sys

PROJECT = "default"
KILL_SWITCH = "kill-switch"

REGIONS = ["eu", "us", "uk", "apac", "latam", "ca", "de", "fr", "jp", "in"]
PLANS = ["free", "pro", "team", "enterprise"]
WORDS = ["checkout", "search", "profile", "billing", "onboarding", "cart", "feed",
         "inbox", "reports", "export", "import", "sso", "audit", "pricing",
         "dashboard", "mobile", "editor", "comments", "uploads", "alerts"]
ADJ = ["new", "fast", "beta", "v2", "redesign", "async", "cached", "bulk",
       "smart", "legacy-off", "dark", "experimental"]


def constraint(rng):
    kind = rng.choice(["region", "plan", "email", "path", "age", "signup",
                       "version", "tenant", "user", "created"])
    c = {}
    if kind == "region":
        c = {"contextName": "region", "operator": rng.choice(["IN", "NOT_IN"]),
             "values": rng.sample(REGIONS, rng.randint(1, 4))}
    elif kind == "plan":
        c = {"contextName": "plan", "operator": "IN",
             "values": rng.sample(PLANS, rng.randint(1, 2))}
    elif kind == "email":
        c = {"contextName": "email", "operator": "STR_CONTAINS",
             "values": [rng.choice(["@example.com", "@corp.example", "+beta@"])],
             "caseInsensitive": True}
    elif kind == "path":
        c = {"contextName": "path", "operator": "STR_STARTS_WITH",
             "values": ["/" + rng.choice(WORDS), "/api/" + rng.choice(WORDS)]}
    elif kind == "age":
        c = {"contextName": "accountAgeDays", "operator": rng.choice(["NUM_GT", "NUM_LTE"]),
             "value": str(rng.choice([7, 30, 90, 365]))}
    elif kind == "signup":
        c = {"contextName": "signupDate", "operator": "DATE_AFTER",
             "value": f"2024-{rng.randint(1, 12):02d}-01T00:00:00.000Z"}
    elif kind == "created":
        c = {"contextName": "currentTime", "operator": "DATE_BEFORE",
             "value": f"2027-{rng.randint(1, 12):02d}-15T00:00:00.000Z"}
    elif kind == "version":
        c = {"contextName": "appVersion", "operator": rng.choice(["SEMVER_EQ", "SEMVER_GT"]),
             "value": f"{rng.randint(1, 4)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}"}
    elif kind == "tenant":
        c = {"contextName": "tenantId", "operator": "IN",
             "values": [f"t-{rng.randint(1, 999):03d}" for _ in range(rng.randint(2, 5))]}
    else:
        c = {"contextName": "userId", "operator": "IN",
             "values": [f"user-{rng.randint(1, 9999)}" for _ in range(rng.randint(1, 5))]}
    if rng.random() < 0.1:
        c["inverted"] = True
    c.setdefault("values", [])
    c.setdefault("inverted", False)
    c.setdefault("caseInsensitive", False)
    return c


def variants(rng, stickiness="default", strategy=False):
    names = rng.choice([["control", "treatment"], ["blue", "green", "red"], ["a", "b"]])
    out = []
    for i, n in enumerate(names):
        v = {"name": n, "weight": 1000 // len(names) + (1000 % len(names) if i == 0 else 0),
             "stickiness": stickiness}
        if not strategy:
            # Strategy variants carry no weightType in the client API model.
            v["weightType"] = "variable"
        if rng.random() < 0.6:
            v["payload"] = rng.choice([
                {"type": "string", "value": f"{n}-copy"},
                {"type": "json", "value": json.dumps({"color": n, "limit": rng.randint(1, 50)})},
                {"type": "number", "value": str(rng.randint(1, 100))},
            ])
        out.append(v)
    return out


def strategy(rng, kind, segment_ids, order):
    s = {"name": kind, "sortOrder": order, "parameters": {}, "constraints": []}
    if kind == "flexibleRollout":
        s["parameters"] = {"rollout": str(rng.choice([5, 10, 25, 50, 75, 100])),
                           "stickiness": rng.choice(["default", "userId", "sessionId"]),
                           "groupId": ""}
    elif kind == "userWithId":
        s["parameters"] = {"userIds": ",".join(f"user-{rng.randint(1, 9999)}"
                                               for _ in range(rng.randint(2, 6)))}
    n = rng.choices([0, 1, 2, 3], weights=[6, 4, 2, 1])[0]
    s["constraints"] = [constraint(rng) for _ in range(n)]
    if segment_ids and rng.random() < 0.2:
        s["segments"] = rng.sample(segment_ids, rng.randint(1, 2))
    if kind == "flexibleRollout" and rng.random() < 0.25:
        s["variants"] = variants(rng, s["parameters"]["stickiness"], strategy=True)
    return s


def flag(name, enabled, strategies, rng, with_variants=False):
    f = {"name": name, "type": rng.choice(["release", "experiment", "operational", "kill-switch"]),
         "project": PROJECT, "enabled": enabled, "stale": False,
         "impressionData": rng.random() < 0.1, "strategies": strategies}
    if rng.random() < 0.3:
        f["description"] = name.replace("-", " ")
    if with_variants:
        f["variants"] = variants(rng)
    return f


def kill_switch():
    return {"name": KILL_SWITCH, "type": "kill-switch", "description": "kill switch",
            "project": PROJECT, "enabled": True, "stale": False, "impressionData": False,
            "strategies": [{"name": "default", "sortOrder": 0, "parameters": {},
                            "constraints": []}]}


def segments(rng, count):
    return [{"id": i + 1,
             "constraints": [constraint(rng) for _ in range(rng.randint(1, 3))]}
            for i in range(count)]


def small(rng):
    segs = [{"id": 1, "constraints": [
        {"contextName": "region", "operator": "IN", "values": ["eu", "uk"],
         "inverted": False, "caseInsensitive": False}]}]
    return {"version": 2, "segments": segs, "features": [
        kill_switch(),
        flag("checkout-v2", True, [{"name": "flexibleRollout", "sortOrder": 0, "constraints": [],
             "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "checkout-v2"}}], rng),
        flag("beta-users", True, [{"name": "userWithId", "sortOrder": 0, "constraints": [],
             "parameters": {"userIds": "user-1,user-2,user-123,user-777"}}], rng),
        flag("new-pricing", True, [{"name": "default", "sortOrder": 0, "parameters": {},
             "segments": [1], "constraints": [
                 {"contextName": "plan", "operator": "IN", "values": ["pro", "team"],
                  "inverted": False, "caseInsensitive": False},
                 {"contextName": "appVersion", "operator": "SEMVER_GT", "value": "2.0.0",
                  "values": [], "inverted": False, "caseInsensitive": False}]}], rng),
        flag("banner-color", True, [{"name": "flexibleRollout", "sortOrder": 0, "constraints": [],
             "parameters": {"rollout": "100", "stickiness": "default", "groupId": "banner-color"}}],
             rng, with_variants=True),
    ]}


def large(rng):
    segs = segments(rng, 12)
    ids = [s["id"] for s in segs]
    features = [kill_switch()]
    # 200 strategies over 350 flags, as in Edge's data set: most flags with one,
    # some with two or three, the rest (about 45%) with none.
    counts = []
    while sum(counts) < 199:
        counts.append(min(199 - sum(counts), rng.choices([1, 2, 3], weights=[7, 2, 1])[0]))
    counts += [0] * (349 - len(counts))
    rng.shuffle(counts)
    names = set()
    for count in counts:
        name = f"{rng.choice(WORDS)}-{rng.choice(ADJ)}-{rng.randint(1, 999)}"
        while name in names:
            name = f"{rng.choice(WORDS)}-{rng.choice(ADJ)}-{rng.randint(1, 999)}"
        names.add(name)
        kinds = rng.choices(["flexibleRollout", "default", "userWithId"], weights=[6, 3, 1], k=count)
        strategies = [strategy(rng, k, ids, i) for i, k in enumerate(kinds)]
        features.append(flag(name, rng.random() < 0.8, strategies, rng,
                             with_variants=count > 0 and rng.random() < 0.1))
    return {"version": 2, "segments": segs, "features": features}


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "small"
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 4242
    rng = random.Random(seed)
    state = {"small": small, "large": large}[which](rng)
    json.dump(state, sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main()
