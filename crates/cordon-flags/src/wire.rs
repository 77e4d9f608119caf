//! JSON as the Unleash wire format has it.
//!
//! `unleash-types` 0.16 derives `Serialize` for its constraint `Operator`, so an operator
//! it does not know (kept as `Operator::Unknown("X")` when read) is written back as
//! `{"UNKNOWN":"X"}`, which neither it nor any SDK can read. Every value this crate
//! writes out (to the database or to a client) goes through [`to_value`], which writes
//! such operators back as the plain string they were read from.

use serde::Serialize;
use serde_json::Value;

/// Serialize `v` to JSON the way Unleash clients expect it.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    // Serializing the plain data types of unleash-types to a Value cannot fail.
    let mut value = serde_json::to_value(v).unwrap_or(Value::Null);
    fix_operators(&mut value);
    value
}

/// Serialize `v` to JSON bytes the way Unleash clients expect it.
pub fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(&to_value(v)).unwrap_or_default()
}

fn fix_operators(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(op) = map.get_mut("operator") {
                let unknown = op
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .and_then(|o| o.get("UNKNOWN"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(name) = unknown {
                    *op = Value::String(name);
                }
            }
            map.values_mut().for_each(fix_operators);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_operators),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use unleash_types::client_features::Constraint;

    #[test]
    fn unknown_operators_round_trip() {
        let c: Constraint = serde_json::from_str(
            r#"{"contextName":"x","operator":"SOME_FUTURE_OP","values":["a"]}"#,
        )
        .unwrap();
        let v = super::to_value(&c);
        assert_eq!(v["operator"], "SOME_FUTURE_OP");
        let back: Constraint = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
