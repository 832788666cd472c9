//! The DNS message format (RFC 1035 section 4): query encoding and answer decoding, no I/O.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record type A: an IPv4 address.
pub const TYPE_A: u16 = 1;
/// Record type CNAME: an alias for another name.
pub const TYPE_CNAME: u16 = 5;
/// Record type SOA: a zone's start of authority; in a negative answer it says how long to believe it.
const TYPE_SOA: u16 = 6;
/// Record type MX: a mail exchanger.
pub const TYPE_MX: u16 = 15;
/// Record type AAAA: an IPv6 address.
pub const TYPE_AAAA: u16 = 28;
/// Class IN, the Internet; records of other classes are ignored.
const CLASS_IN: u16 = 1;

/// Response code: no error.
pub const RCODE_NOERROR: u8 = 0;
/// Response code: the name does not exist.
pub const RCODE_NXDOMAIN: u8 = 3;

/// Header flag bits.
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const HEADER_LEN: usize = 12;
/// The longest name on the wire, length octets included (RFC 1035 2.3.4).
const MAX_NAME_WIRE: usize = 255;

/// Why a reply could not be decoded; the resolver reports it as a temporary failure.
pub type Malformed = &'static str;

/// A record's data, for the types the resolver asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// Preference and exchange host; the root name (a null MX) is "".
    Mx(u16, String),
}

/// One resource record of class IN and a known type. Names are lowercase without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    /// How many seconds the record may be kept.
    pub ttl: u32,
    pub data: Data,
}

/// A reply that answers our question.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub rcode: u8,
    /// The answer section's records of known types; others are left out.
    pub answers: Vec<Record>,
    /// For a negative answer (no such name, or no records of the type): how many seconds it may be kept,
    /// the smaller of the authority section's SOA TTL and its MINIMUM field (RFC 2308 section 5). None without
    /// an SOA: such an answer is not to be kept at all.
    pub negative_ttl: Option<u32>,
}

/// The records that answer a question, and how long they may be kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub data: Vec<&'a Data>,
    /// The smallest TTL of these records and of the CNAMEs that led to them; None when there are no records.
    pub ttl: Option<u32>,
}

/// What a received packet turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The answer to our query.
    Reply(Reply),
    /// Our answer, cut short to fit a UDP datagram: ask again over TCP.
    Truncated,
    /// Not an answer to our query (another id or question, or not a response): ignore it.
    Foreign,
}

/// The query for `name` (lowercase, checked, no trailing dot) and `qtype`, recursion desired.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    for word in [id, FLAG_RD, 1, 0, 0, 0] {
        packet.extend_from_slice(&word.to_be_bytes());
    }
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    packet
}

/// Decodes `packet` as the reply to query `id` for `name` and `qtype`.
///
/// A reply to another id or question is `Foreign` (RFC 5452 3: such packets are dropped);
/// an error reply may leave the question out.
pub fn decode(packet: &[u8], id: u16, name: &str, qtype: u16) -> Result<Decoded, Malformed> {
    let mut reader = Reader { packet, pos: 0 };
    let Ok(header) = reader.header() else {
        return Ok(Decoded::Foreign);
    };
    if header.id != id || header.flags & FLAG_QR == 0 {
        return Ok(Decoded::Foreign);
    }
    let rcode = (header.flags & 0x000f) as u8;
    if (header.qdcount == 0 && rcode == RCODE_NOERROR) || header.qdcount > 1 {
        return Ok(Decoded::Foreign);
    }
    if header.qdcount == 1 {
        let (qname, question_type, class) = (reader.name()?, reader.u16()?, reader.u16()?);
        if qname != name || question_type != qtype || class != CLASS_IN {
            return Ok(Decoded::Foreign);
        }
    }
    if header.flags & FLAG_TC != 0 {
        return Ok(Decoded::Truncated);
    }
    let mut answers = Vec::new();
    for _ in 0..header.ancount {
        if let Some(Item::Record(record)) = reader.record()? {
            answers.push(record);
        }
    }
    let mut negative_ttl = None;
    for _ in 0..header.nscount {
        if let Some(Item::Soa { ttl, minimum }) = reader.record()? {
            negative_ttl.get_or_insert(ttl.min(minimum));
        }
    }
    Ok(Decoded::Reply(Reply {
        rcode,
        answers,
        negative_ttl,
    }))
}

/// The id, name and type of the question a packet carries, if it carries one: what [`decode`]
/// holds a reply against. For the fuzz target, which answers every packet's own question.
pub(crate) fn question(packet: &[u8]) -> Option<(u16, String, u16)> {
    let mut reader = Reader { packet, pos: 0 };
    let header = reader.header().ok()?;
    if header.qdcount == 0 {
        return None;
    }
    Some((header.id, reader.name().ok()?, reader.u16().ok()?))
}

impl Reply {
    /// The answers of type `qtype` for `name`, following the CNAME chain from `name` within the
    /// answer section. A CNAME loop is malformed.
    pub fn data_for(&self, name: &str, qtype: u16) -> Result<Answer<'_>, Malformed> {
        let mut owner = name;
        let mut chain_ttl = u32::MAX;
        for _ in 0..=self.answers.len() {
            let alias = self.answers.iter().find_map(|record| match &record.data {
                Data::Cname(target) if record.name == owner => Some((target.as_str(), record.ttl)),
                _ => None,
            });
            match alias {
                Some((target, ttl)) => (owner, chain_ttl) = (target, chain_ttl.min(ttl)),
                None => {
                    let records: Vec<&Record> = self
                        .answers
                        .iter()
                        .filter(|record| record.name == owner && data_type(&record.data) == qtype)
                        .collect();
                    let ttl = records.iter().map(|record| record.ttl).min();
                    return Ok(Answer {
                        data: records.into_iter().map(|record| &record.data).collect(),
                        ttl: ttl.map(|ttl| ttl.min(chain_ttl)),
                    });
                }
            }
        }
        Err("CNAME loop in the answer")
    }
}

fn data_type(data: &Data) -> u16 {
    match data {
        Data::A(_) => TYPE_A,
        Data::Aaaa(_) => TYPE_AAAA,
        Data::Cname(_) => TYPE_CNAME,
        Data::Mx(..) => TYPE_MX,
    }
}

struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
}

/// A resource record as read: one the resolver uses, or the part of an SOA that negative caching needs.
enum Item {
    Record(Record),
    Soa { ttl: u32, minimum: u32 },
}

/// A cursor over a whole packet (names may point anywhere before themselves).
struct Reader<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize) -> Result<&[u8], Malformed> {
        let bytes = self
            .packet
            .get(self.pos..self.pos + len)
            .ok_or("reply ends early")?;
        self.pos += len;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let bytes = self.bytes(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// A TTL or SOA time field; RFC 2181 8: a value with the top bit set counts as zero.
    fn seconds(&mut self) -> Result<u32, Malformed> {
        let bytes = self.bytes(4)?;
        let value = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Ok(if value > i32::MAX as u32 { 0 } else { value })
    }

    fn header(&mut self) -> Result<Header, Malformed> {
        let header = Header {
            id: self.u16()?,
            flags: self.u16()?,
            qdcount: self.u16()?,
            ancount: self.u16()?,
            nscount: self.u16()?,
        };
        self.bytes(2)?; // ARCOUNT: the additional section is not read.
        Ok(header)
    }

    /// A name, lowercase, labels joined by dots, no trailing dot (the root is "").
    ///
    /// Every compression pointer must point before the previous one (or before the name's
    /// start), so loops are impossible; octets that are not printable ASCII, dots and
    /// backslashes inside labels come out as `\DDD`, as in zone files.
    fn name(&mut self) -> Result<String, Malformed> {
        let mut name = String::new();
        let (mut pos, mut limit, mut wire_len) = (self.pos, self.pos, 1);
        let mut resume = None;
        loop {
            let len = *self.packet.get(pos).ok_or("name runs past the reply")? as usize;
            match len & 0xc0 {
                0x00 if len == 0 => break,
                0x00 => {
                    wire_len += 1 + len;
                    if wire_len > MAX_NAME_WIRE {
                        return Err("name longer than 255 octets");
                    }
                    let label = self
                        .packet
                        .get(pos + 1..pos + 1 + len)
                        .ok_or("name runs past the reply")?;
                    if !name.is_empty() {
                        name.push('.');
                    }
                    push_label(&mut name, label);
                    pos += 1 + len;
                }
                0xc0 => {
                    let low = *self.packet.get(pos + 1).ok_or("name runs past the reply")?;
                    let target = ((len & 0x3f) << 8) | low as usize;
                    if target >= limit {
                        return Err("compression pointer does not point backwards");
                    }
                    resume.get_or_insert(pos + 2);
                    (pos, limit) = (target, target);
                }
                _ => return Err("unknown label type"),
            }
        }
        self.pos = resume.unwrap_or(pos + 1);
        Ok(name)
    }

    /// One resource record; `None` for other classes and types.
    fn record(&mut self) -> Result<Option<Item>, Malformed> {
        let name = self.name()?;
        let (rtype, class, ttl) = (self.u16()?, self.u16()?, self.seconds()?);
        let len = self.u16()? as usize;
        let end = self.pos + len;
        if end > self.packet.len() {
            return Err("record data runs past the reply");
        }
        let record = |data| Some(Item::Record(Record { name, ttl, data }));
        let item = match (class, rtype) {
            (CLASS_IN, TYPE_A) => {
                let octets: [u8; 4] = self.bytes(len)?.try_into().map_err(|_| "bad A record")?;
                record(Data::A(octets.into()))
            }
            (CLASS_IN, TYPE_AAAA) => {
                let octets: [u8; 16] =
                    self.bytes(len)?.try_into().map_err(|_| "bad AAAA record")?;
                record(Data::Aaaa(octets.into()))
            }
            (CLASS_IN, TYPE_CNAME) => record(Data::Cname(self.name()?)),
            (CLASS_IN, TYPE_MX) => record(Data::Mx(self.u16()?, self.name()?)),
            (CLASS_IN, TYPE_SOA) => {
                let (_primary, _mailbox) = (self.name()?, self.name()?);
                self.bytes(16)?; // SERIAL, REFRESH, RETRY, EXPIRE
                let minimum = self.seconds()?;
                Some(Item::Soa { ttl, minimum })
            }
            _ => {
                self.pos = end;
                None
            }
        };
        if self.pos != end {
            return Err("record data length does not match its content");
        }
        Ok(item)
    }
}

fn push_label(name: &mut String, label: &[u8]) {
    for &byte in label {
        let byte = byte.to_ascii_lowercase();
        if byte.is_ascii_graphic() && byte != b'.' && byte != b'\\' {
            name.push(byte as char);
        } else {
            name.push_str(&format!("\\{byte:03}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply header: id, flags, one question, `ancount` answers.
    fn header(id: u16, flags: u16, ancount: u16) -> Vec<u8> {
        [id, flags, 1, ancount, 0, 0]
            .iter()
            .flat_map(|word| word.to_be_bytes())
            .collect()
    }

    /// Wire form of a dotted name.
    fn name(dotted: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for label in dotted.split('.').filter(|label| !label.is_empty()) {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }

    /// A reply to `qname`/`qtype` whose question starts at offset 12, then `answers` appended.
    fn reply(id: u16, flags: u16, qname: &str, qtype: u16, answers: &[&[u8]]) -> Vec<u8> {
        let mut packet = header(id, flags, answers.len() as u16);
        packet.extend(name(qname));
        packet.extend(qtype.to_be_bytes());
        packet.extend(CLASS_IN.to_be_bytes());
        for answer in answers {
            packet.extend_from_slice(answer);
        }
        packet
    }

    /// A record: owner (wire form), type, class IN, TTL 300, data.
    fn rr(owner: &[u8], rtype: u16, data: &[u8]) -> Vec<u8> {
        rr_ttl(owner, rtype, 300, data)
    }

    fn rr_ttl(owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
        let mut record = owner.to_vec();
        record.extend(rtype.to_be_bytes());
        record.extend(CLASS_IN.to_be_bytes());
        record.extend(ttl.to_be_bytes());
        record.extend((data.len() as u16).to_be_bytes());
        record.extend_from_slice(data);
        record
    }

    fn mx_data(preference: u16, exchange: &[u8]) -> Vec<u8> {
        let mut data = preference.to_be_bytes().to_vec();
        data.extend_from_slice(exchange);
        data
    }

    /// A pointer to the question's name at offset 12.
    const QNAME: [u8; 2] = [0xc0, 12];
    const RESPONSE: u16 = FLAG_QR | FLAG_RD | 0x0080;

    /// `packet` with `authority` appended as its authority section.
    fn with_authority(mut packet: Vec<u8>, authority: &[&[u8]]) -> Vec<u8> {
        packet[8..10].copy_from_slice(&(authority.len() as u16).to_be_bytes());
        for record in authority {
            packet.extend_from_slice(record);
        }
        packet
    }

    /// SOA record data with this MINIMUM.
    fn soa_data(minimum: u32) -> Vec<u8> {
        let mut data = name("ns.test");
        data.extend(name("hostmaster.test"));
        for field in [2026120101, 1200, 120, 604800, minimum] {
            data.extend(field.to_be_bytes());
        }
        data
    }

    fn data_of<'a>(reply: &'a Reply, name: &str, qtype: u16) -> Result<Vec<&'a Data>, Malformed> {
        reply.data_for(name, qtype).map(|answer| answer.data)
    }

    fn answers(packet: &[u8], id: u16, qname: &str, qtype: u16) -> Reply {
        match decode(packet, id, qname, qtype) {
            Ok(Decoded::Reply(reply)) => reply,
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn encodes_a_query_with_recursion_desired() {
        assert_eq!(
            encode_query(0xbeef, "mail.example.org", TYPE_MX),
            b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
              \x04mail\x07example\x03org\x00\x00\x0f\x00\x01"
        );
    }

    #[test]
    fn decodes_several_mx_with_compression() {
        let packet = reply(
            7,
            RESPONSE,
            "example.org",
            TYPE_MX,
            &[
                &rr(&QNAME, TYPE_MX, &mx_data(10, b"\x03mx1\xc0\x0c")),
                &rr(&QNAME, TYPE_MX, &mx_data(20, b"\x03MX2\xc0\x0c")),
            ],
        );
        let reply = answers(&packet, 7, "example.org", TYPE_MX);
        assert_eq!(reply.rcode, RCODE_NOERROR);
        assert_eq!(
            data_of(&reply, "example.org", TYPE_MX),
            Ok(vec![
                &Data::Mx(10, "mx1.example.org".into()),
                &Data::Mx(20, "mx2.example.org".into()),
            ])
        );
    }

    #[test]
    fn decodes_a_null_mx_as_an_empty_exchange() {
        let packet = reply(
            1,
            RESPONSE,
            "example.org",
            TYPE_MX,
            &[&rr(&QNAME, TYPE_MX, &mx_data(0, b"\0"))],
        );
        let reply = answers(&packet, 1, "example.org", TYPE_MX);
        assert_eq!(
            data_of(&reply, "example.org", TYPE_MX),
            Ok(vec![&Data::Mx(0, String::new())])
        );
    }

    #[test]
    fn follows_a_cname_chain_within_the_answer() {
        // www.example.org -> web.example.org (at offset 45) -> 192.0.2.1
        let packet = reply(
            2,
            RESPONSE,
            "www.example.org",
            TYPE_A,
            &[
                &rr(&QNAME, TYPE_CNAME, b"\x03web\xc0\x10"),
                &rr(&[0xc0, 45], TYPE_A, &[192, 0, 2, 1]),
                &rr(b"\x05other\0", TYPE_A, &[192, 0, 2, 9]),
            ],
        );
        let reply = answers(&packet, 2, "www.example.org", TYPE_A);
        assert_eq!(
            data_of(&reply, "www.example.org", TYPE_A),
            Ok(vec![&Data::A(Ipv4Addr::new(192, 0, 2, 1))])
        );
    }

    #[test]
    fn a_cname_loop_is_malformed() {
        let packet = reply(
            3,
            RESPONSE,
            "a.test",
            TYPE_A,
            &[
                &rr(&QNAME, TYPE_CNAME, &name("b.test")),
                &rr(&name("b.test"), TYPE_CNAME, &QNAME),
            ],
        );
        let reply = answers(&packet, 3, "a.test", TYPE_A);
        assert_eq!(
            data_of(&reply, "a.test", TYPE_A),
            Err("CNAME loop in the answer")
        );
    }

    #[test]
    fn ignores_other_types_and_classes() {
        let mut chaos = rr(&QNAME, TYPE_A, &[10, 0, 0, 1]);
        chaos[5] = 3; // class CH
        let packet = reply(
            4,
            RESPONSE,
            "host.test",
            TYPE_AAAA,
            &[
                &rr(&QNAME, 16, b"\x05hello"),
                &chaos,
                &rr(&QNAME, TYPE_AAAA, &Ipv6Addr::LOCALHOST.octets()),
            ],
        );
        let reply = answers(&packet, 4, "host.test", TYPE_AAAA);
        assert_eq!(
            reply.answers,
            vec![Record {
                name: "host.test".into(),
                ttl: 300,
                data: Data::Aaaa(Ipv6Addr::LOCALHOST)
            }]
        );
    }

    #[test]
    fn reports_nxdomain_with_or_without_the_question() {
        let with = reply(5, RESPONSE | 3, "gone.test", TYPE_A, &[]);
        assert_eq!(answers(&with, 5, "gone.test", TYPE_A).rcode, RCODE_NXDOMAIN);
        let mut without = header(5, RESPONSE | 3, 0);
        without[5] = 0; // QDCOUNT 0
        assert_eq!(
            answers(&without, 5, "gone.test", TYPE_A).rcode,
            RCODE_NXDOMAIN
        );
    }

    #[test]
    fn foreign_packets_are_ignored() {
        let packet = reply(
            6,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&QNAME, TYPE_A, &[10, 0, 0, 1])],
        );
        assert_eq!(
            decode(&packet, 7, "host.test", TYPE_A),
            Ok(Decoded::Foreign),
            "wrong id"
        );
        assert_eq!(
            decode(&packet, 6, "other.test", TYPE_A),
            Ok(Decoded::Foreign),
            "wrong name"
        );
        assert_eq!(
            decode(&packet, 6, "host.test", TYPE_MX),
            Ok(Decoded::Foreign),
            "wrong type"
        );
        assert_eq!(
            decode(&packet[..5], 6, "host.test", TYPE_A),
            Ok(Decoded::Foreign),
            "no header"
        );
        let query = encode_query(6, "host.test", TYPE_A);
        assert_eq!(
            decode(&query, 6, "host.test", TYPE_A),
            Ok(Decoded::Foreign),
            "a query"
        );
        let mut empty = header(6, RESPONSE, 0);
        empty[5] = 0;
        assert_eq!(
            decode(&empty, 6, "host.test", TYPE_A),
            Ok(Decoded::Foreign),
            "no question"
        );
    }

    #[test]
    fn the_question_matches_case_insensitively() {
        let packet = reply(
            8,
            RESPONSE,
            "HoSt.TeSt",
            TYPE_A,
            &[&rr(&QNAME, TYPE_A, &[10, 0, 0, 1])],
        );
        let reply = answers(&packet, 8, "host.test", TYPE_A);
        assert_eq!(
            data_of(&reply, "host.test", TYPE_A),
            Ok(vec![&Data::A(Ipv4Addr::new(10, 0, 0, 1))])
        );
    }

    #[test]
    fn truncated_flag_asks_for_tcp() {
        let mut packet = reply(
            9,
            RESPONSE | FLAG_TC,
            "big.test",
            TYPE_A,
            &[&rr(&QNAME, TYPE_A, &[10, 0, 0, 1])],
        );
        packet.truncate(packet.len() - 3);
        assert_eq!(
            decode(&packet, 9, "big.test", TYPE_A),
            Ok(Decoded::Truncated)
        );
    }

    #[test]
    fn cut_packets_are_malformed() {
        let packet = reply(
            10,
            RESPONSE,
            "host.test",
            TYPE_MX,
            &[&rr(&QNAME, TYPE_MX, &mx_data(5, b"\x02mx\xc0\x0c"))],
        );
        for len in 0..packet.len() {
            let result = decode(&packet[..len], 10, "host.test", TYPE_MX);
            if len < HEADER_LEN {
                assert_eq!(result, Ok(Decoded::Foreign), "cut at {len}");
            } else {
                assert!(result.is_err(), "cut at {len}: {result:?}");
            }
        }
    }

    #[test]
    fn bad_record_lengths_are_malformed() {
        let short_a = reply(
            11,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&QNAME, TYPE_A, &[10, 0, 0])],
        );
        assert_eq!(
            decode(&short_a, 11, "host.test", TYPE_A),
            Err("bad A record")
        );
        let long_mx = reply(
            11,
            RESPONSE,
            "host.test",
            TYPE_MX,
            &[&rr(&QNAME, TYPE_MX, b"\0\x05\0extra")],
        );
        assert_eq!(
            decode(&long_mx, 11, "host.test", TYPE_MX),
            Err("record data length does not match its content")
        );
    }

    #[test]
    fn pointer_loops_and_bad_pointers_are_malformed() {
        let to_itself = reply(
            12,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&[0xc0, 27], TYPE_A, &[10, 0, 0, 1])],
        );
        assert_eq!(
            decode(&to_itself, 12, "host.test", TYPE_A),
            Err("compression pointer does not point backwards")
        );
        // A label then a pointer back to that label: each jump is backwards, but not past the last.
        let two_step = reply(
            12,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&[1, b'a', 0xc0, 27], TYPE_A, &[10, 0, 0, 1])],
        );
        assert_eq!(
            decode(&two_step, 12, "host.test", TYPE_A),
            Err("compression pointer does not point backwards")
        );
        let beyond = reply(
            12,
            RESPONSE,
            "host.test",
            TYPE_MX,
            &[&rr(&QNAME, TYPE_MX, &mx_data(1, &[0xc0, 0xff]))],
        );
        assert!(decode(&beyond, 12, "host.test", TYPE_MX).is_err());
        let extended_label = reply(
            12,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&[0x41, 0], TYPE_A, &[10, 0, 0, 1])],
        );
        assert_eq!(
            decode(&extended_label, 12, "host.test", TYPE_A),
            Err("unknown label type")
        );
    }

    #[test]
    fn overlong_names_are_malformed() {
        let mut owner = Vec::new();
        for _ in 0..5 {
            owner.push(63);
            owner.extend([b'a'; 63]);
        }
        owner.push(0);
        let packet = reply(
            13,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr(&owner, TYPE_A, &[10, 0, 0, 1])],
        );
        assert_eq!(
            decode(&packet, 13, "host.test", TYPE_A),
            Err("name longer than 255 octets")
        );
    }

    #[test]
    fn odd_octets_in_labels_are_escaped() {
        let packet = reply(
            14,
            RESPONSE,
            "host.test",
            TYPE_MX,
            &[&rr(&QNAME, TYPE_MX, &mx_data(1, b"\x04a.b\xff\0"))],
        );
        let reply = answers(&packet, 14, "host.test", TYPE_MX);
        assert_eq!(
            data_of(&reply, "host.test", TYPE_MX),
            Ok(vec![&Data::Mx(1, "a\\046b\\255".into())])
        );
    }

    #[test]
    fn the_ttl_is_the_smallest_along_the_cname_chain() {
        // www.example.org -> web.example.org (at offset 45), CNAME TTL 60; the two A records 300 and 200.
        let packet = reply(
            15,
            RESPONSE,
            "www.example.org",
            TYPE_A,
            &[
                &rr_ttl(&QNAME, TYPE_CNAME, 60, b"\x03web\xc0\x10"),
                &rr_ttl(&[0xc0, 45], TYPE_A, 300, &[192, 0, 2, 1]),
                &rr_ttl(&[0xc0, 45], TYPE_A, 200, &[192, 0, 2, 2]),
            ],
        );
        let reply = answers(&packet, 15, "www.example.org", TYPE_A);
        assert_eq!(
            reply.data_for("www.example.org", TYPE_A).unwrap().ttl,
            Some(60)
        );
        assert_eq!(
            reply.data_for("web.example.org", TYPE_A).unwrap().ttl,
            Some(200)
        );
        let none = reply.data_for("www.example.org", TYPE_MX).unwrap();
        assert_eq!((none.data.len(), none.ttl), (0, None));
    }

    #[test]
    fn a_ttl_with_the_top_bit_set_counts_as_zero() {
        let packet = reply(
            16,
            RESPONSE,
            "host.test",
            TYPE_A,
            &[&rr_ttl(&QNAME, TYPE_A, 0x8000_0001, &[192, 0, 2, 1])],
        );
        let reply = answers(&packet, 16, "host.test", TYPE_A);
        assert_eq!(reply.data_for("host.test", TYPE_A).unwrap().ttl, Some(0));
    }

    #[test]
    fn a_negative_answer_is_kept_as_long_as_its_soa_says() {
        let soa = |ttl, minimum| rr_ttl(&name("test"), TYPE_SOA, ttl, &soa_data(minimum));
        let nxdomain = with_authority(
            reply(17, RESPONSE | 3, "gone.test", TYPE_MX, &[]),
            &[&soa(900, 60)],
        );
        assert_eq!(
            answers(&nxdomain, 17, "gone.test", TYPE_MX).negative_ttl,
            Some(60)
        );
        let nodata = with_authority(
            reply(17, RESPONSE, "host.test", TYPE_AAAA, &[]),
            &[&soa(30, 3600)],
        );
        assert_eq!(
            answers(&nodata, 17, "host.test", TYPE_AAAA).negative_ttl,
            Some(30)
        );
        let no_soa = reply(17, RESPONSE | 3, "gone.test", TYPE_MX, &[]);
        assert_eq!(
            answers(&no_soa, 17, "gone.test", TYPE_MX).negative_ttl,
            None
        );
        let data = soa_data(60);
        let short = rr_ttl(&name("test"), TYPE_SOA, 900, &data[..data.len() - 4]);
        let cut = with_authority(
            reply(17, RESPONSE | 3, "gone.test", TYPE_MX, &[]),
            &[&short],
        );
        assert!(decode(&cut, 17, "gone.test", TYPE_MX).is_err());
    }
}
