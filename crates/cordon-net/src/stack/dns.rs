//! The sandbox's DNS server: answers from policy, never from the internet.
//!
//! A name the policy allows gets a fake address from [`super::FAKE_NET`],
//! stable for the session ([`NameTable`]); the TCP side later maps that
//! address back to the name, so the L7 layer knows which name a connection
//! was meant for without trusting anything the sandbox says. Names the policy
//! rejects get NXDOMAIN. There is no IPv6 (AAAA answers are empty) and no
//! other record type. Parsing and building use hickory-proto.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::{DNS_TTL_SECS, FAKE_NET};

/// Allowed names and their fake addresses, both ways. Never forgets a name:
/// a fake address means the same name for the whole session.
#[derive(Debug)]
pub(crate) struct NameTable {
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
    capacity: usize,
}

impl NameTable {
    /// A table for at most `capacity` names (and at most what [`FAKE_NET`] holds).
    pub(crate) fn new(capacity: usize) -> Self {
        let pool = (1usize << (32 - FAKE_NET.1)) - 2;
        Self {
            by_name: HashMap::new(),
            by_ip: HashMap::new(),
            capacity: capacity.min(pool),
        }
    }

    /// The fake address of `name`, assigned now if it has none; `None` when the table is full.
    pub(crate) fn assign(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.by_name.get(name) {
            return Some(ip);
        }
        if self.by_name.len() >= self.capacity {
            return None;
        }
        // Host part 0 is the network's own address; start at 1.
        let ip = Ipv4Addr::from(u32::from(FAKE_NET.0) + 1 + self.by_name.len() as u32);
        self.by_name.insert(name.to_owned(), ip);
        self.by_ip.insert(ip, name.to_owned());
        Some(ip)
    }

    /// The name `ip` was handed out for.
    pub(crate) fn name_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// What to log about one answered query (a `net.dns` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsLog {
    pub(crate) name: String,
    pub(crate) qtype: String,
    /// The fake address, or `nodata`, `nxdomain`, `servfail`.
    pub(crate) answer: String,
}

/// The response to send, if any, and what to log about it.
#[derive(Debug)]
pub(crate) struct DnsReply {
    pub(crate) bytes: Vec<u8>,
    pub(crate) log: Option<DnsLog>,
    /// The policy refused the name (NXDOMAIN).
    pub(crate) refused: bool,
}

/// The answer to one DNS message from the sandbox. `None`: send nothing
/// (not even a header could be parsed, or it is itself a response).
pub(crate) fn answer(
    query: &[u8],
    allows: &dyn Fn(&str) -> bool,
    table: &mut NameTable,
) -> Option<DnsReply> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let Ok(request) = Message::from_vec(query) else {
        return error(&header.metadata, ResponseCode::FormErr);
    };
    if request.metadata.op_code != OpCode::Query {
        return error(&request.metadata, ResponseCode::NotImp);
    }
    let [question] = request.queries.as_slice() else {
        return error(&request.metadata, ResponseCode::FormErr);
    };
    if question.query_class() != DNSClass::IN {
        return error(&request.metadata, ResponseCode::NotImp);
    }

    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata = Metadata::response_from_request(&request.metadata);
    // We behave like a recursive resolver; stub resolvers (and `dig`) expect RA.
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if request.edns.is_some() {
        // RFC 6891: a query with OPT gets a response with OPT.
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }

    let name = normalize(question.name());
    let qtype = question.query_type();
    let refused = name.is_empty() || !allows(&name);
    let outcome = if refused {
        response.metadata.response_code = ResponseCode::NXDomain;
        "nxdomain".to_owned()
    } else {
        match table.assign(&name) {
            None => {
                response.metadata.response_code = ResponseCode::ServFail;
                "servfail".to_owned()
            }
            Some(ip) if qtype == RecordType::A => {
                let record =
                    Record::from_rdata(question.name().clone(), DNS_TTL_SECS, RData::A(A(ip)));
                response.add_answer(record);
                ip.to_string()
            }
            // The name exists but has no such record: AAAA (no IPv6), MX, TXT, ...
            Some(_) => "nodata".to_owned(),
        }
    };
    Some(DnsReply {
        bytes: response.to_vec().ok()?,
        log: Some(DnsLog {
            name,
            qtype: qtype.to_string(),
            answer: outcome,
        }),
        refused,
    })
}

fn error(request: &Metadata, code: ResponseCode) -> Option<DnsReply> {
    let mut response = Message::error_msg(request.id, request.op_code, code);
    response.metadata.recursion_desired = request.recursion_desired;
    Some(DnsReply {
        bytes: response.to_vec().ok()?,
        log: None,
        refused: false,
    })
}

/// Lowercase, without the trailing dot; the root name becomes "".
fn normalize(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query;

    pub(crate) fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg.to_vec().unwrap()
    }

    fn allow_example(name: &str) -> bool {
        name == "example.com" || name.ends_with(".example.com")
    }

    fn ask(table: &mut NameTable, q: &[u8]) -> (Message, Option<DnsLog>) {
        let reply = answer(q, &allow_example, table).expect("a reply");
        (Message::from_vec(&reply.bytes).unwrap(), reply.log)
    }

    #[test]
    fn allowed_a_query_gets_stable_fake_ip() {
        let mut table = NameTable::new(10);
        let (msg, log) = ask(&mut table, &query("Example.COM.", RecordType::A));
        assert_eq!(msg.metadata.id, 0x1234);
        assert_eq!(msg.metadata.message_type, MessageType::Response);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.metadata.recursion_desired && msg.metadata.recursion_available);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.answers.len(), 1);
        let record = &msg.answers[0];
        assert_eq!(record.ttl, DNS_TTL_SECS);
        let RData::A(A(ip)) = record.data else {
            panic!("not an A record: {record:?}")
        };
        assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            log,
            Some(DnsLog {
                name: "example.com".into(),
                qtype: "A".into(),
                answer: "198.18.0.1".into()
            })
        );
        // Same name, same address; another name, another address.
        let (again, _) = ask(&mut table, &query("example.com", RecordType::A));
        assert_eq!(again.answers[0].data, RData::A(A(ip)));
        let (other, _) = ask(&mut table, &query("api.example.com", RecordType::A));
        assert_eq!(
            other.answers[0].data,
            RData::A(A(Ipv4Addr::new(198, 18, 0, 2)))
        );
        assert_eq!(table.name_of(ip), Some("example.com"));
    }

    #[test]
    fn aaaa_and_other_types_are_empty_noerror() {
        let mut table = NameTable::new(10);
        for qtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let (msg, log) = ask(&mut table, &query("example.com", qtype));
            assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{qtype}");
            assert!(msg.answers.is_empty(), "{qtype}");
            assert_eq!(log.unwrap().answer, "nodata");
        }
    }

    #[test]
    fn denied_name_is_nxdomain() {
        let mut table = NameTable::new(10);
        let (msg, log) = ask(&mut table, &query("evil.org", RecordType::A));
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
        assert!(msg.answers.is_empty());
        assert_eq!(log.unwrap().answer, "nxdomain");
        assert_eq!(table.len(), 0);
        let (root, _) = ask(&mut table, &query(".", RecordType::A));
        assert_eq!(root.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn full_table_is_servfail() {
        let mut table = NameTable::new(1);
        ask(&mut table, &query("a.example.com", RecordType::A));
        let (msg, log) = ask(&mut table, &query("b.example.com", RecordType::A));
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(log.unwrap().answer, "servfail");
        // Known names still resolve.
        let (known, _) = ask(&mut table, &query("a.example.com", RecordType::A));
        assert_eq!(known.answers.len(), 1);
    }

    #[test]
    fn malformed_input_never_panics() {
        let mut table = NameTable::new(10);
        // Too short for a header: silence.
        assert!(answer(&[1, 2, 3], &allow_example, &mut table).is_none());
        // A header claiming a question that is not there: FORMERR with the same id.
        let mut q = query("example.com", RecordType::A);
        q.truncate(14);
        let (msg, log) = ask(&mut table, &q);
        assert_eq!(msg.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(msg.metadata.id, 0x1234);
        assert!(log.is_none());
        // A response is never answered (no loops).
        let mut resp = query("example.com", RecordType::A);
        resp[2] |= 0x80;
        assert!(answer(&resp, &allow_example, &mut table).is_none());
        // Two questions: FORMERR.
        let mut two = Message::new(7, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(
            Name::from_ascii("example.com").unwrap(),
            RecordType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("example.com").unwrap(),
            RecordType::A,
        ));
        let (msg, _) = ask(&mut table, &two.to_vec().unwrap());
        assert_eq!(msg.metadata.response_code, ResponseCode::FormErr);
        // Every truncation and every single-byte corruption of a valid query.
        let good = query("api.example.com", RecordType::A);
        for len in 0..good.len() {
            let _ = answer(&good[..len], &allow_example, &mut table);
        }
        for i in 0..good.len() {
            for v in [0u8, 0x3f, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = answer(&bad, &allow_example, &mut table);
            }
        }
    }

    #[test]
    fn non_in_class_and_other_opcodes_not_implemented() {
        let mut table = NameTable::new(10);
        let mut chaos = Message::new(9, MessageType::Query, OpCode::Query);
        let mut q = Query::query(Name::from_ascii("version.bind").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        let (msg, _) = ask(&mut table, &chaos.to_vec().unwrap());
        assert_eq!(msg.metadata.response_code, ResponseCode::NotImp);
        let mut status = Message::new(9, MessageType::Query, OpCode::Status);
        status.add_query(Query::query(
            Name::from_ascii("example.com").unwrap(),
            RecordType::A,
        ));
        let (msg, _) = ask(&mut table, &status.to_vec().unwrap());
        assert_eq!(msg.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn edns_query_gets_opt_back() {
        let mut table = NameTable::new(10);
        let mut msg = Message::new(3, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(
            Name::from_ascii("example.com").unwrap(),
            RecordType::A,
        ));
        msg.set_edns(Edns::new());
        let (resp, _) = ask(&mut table, &msg.to_vec().unwrap());
        assert!(resp.edns.is_some());
        assert_eq!(resp.answers.len(), 1);
    }
}
