//! The subset of msgpack (2.0 spec, str and bin kept apart) that borg's RPC uses.
//!
//! Decoding happens in two passes, as in mini-redis' frame layer: [`check`] decides whether one
//! complete value is buffered without allocating anything (so a header that announces gigabytes
//! costs nothing until the bytes really arrive, and is refused at once if it exceeds the limit),
//! then [`parse`] builds a [`Value`] that borrows strings and binaries from the buffer, so a
//! 20 MiB `put` is never copied before it is written to disk.

use std::fmt;

/// Deepest nesting of arrays/maps we accept; borg's requests nest at most three levels.
pub const MAX_DEPTH: usize = 32;

/// A decoded msgpack value borrowing its strings and binaries from the receive buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// nil (Python `None`).
    Nil,
    /// true or false.
    Bool(bool),
    /// Any msgpack integer (i128 holds both u64 and i64).
    Int(i128),
    /// float 32 or 64.
    Float(f64),
    /// str, valid UTF-8.
    Str(&'a str),
    /// bin.
    Bin(&'a [u8]),
    /// array.
    Array(Vec<Value<'a>>),
    /// map, its pairs in the order sent.
    Map(Vec<(Value<'a>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Looks up a string key in a map value; `None` for other types or a missing key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        match self {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if *s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages sent to the client.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bin(_) => "bytes",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }
}

/// Why a buffer does not (yet) hold a usable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed; the value ends at or after `needed` bytes from the start.
    Incomplete {
        /// At least this many bytes from the start.
        needed: usize,
    },
    /// The value would be larger than the configured limit.
    TooLarge {
        /// Where the message would end, in bytes from its start, as far as known yet.
        announced: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// Not valid msgpack for our purposes (reserved byte, ext type, bad utf-8, too deep).
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete { needed } => write!(f, "incomplete message (need {needed} bytes)"),
            DecodeError::TooLarge { announced, limit } => {
                write!(f, "message of {announced} bytes exceeds the limit of {limit} bytes")
            }
            DecodeError::Invalid(why) => write!(f, "malformed msgpack: {why}"),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    limit: usize,
}

impl<'a> Cursor<'a> {
    /// Makes sure `n` more bytes are available; distinguishes "too large" from "not yet here".
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::TooLarge { announced: usize::MAX, limit: self.limit })?;
        if end > self.limit {
            return Err(DecodeError::TooLarge { announced: end, limit: self.limit });
        }
        if end > self.buf.len() {
            return Err(DecodeError::Incomplete { needed: end });
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

/// What a marker byte announces, decoded once for both passes.
enum Head {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
}

fn head(c: &mut Cursor<'_>) -> Result<Head, DecodeError> {
    let m = c.u8()?;
    Ok(match m {
        0x00..=0x7f => Head::Int(i128::from(m)),
        0x80..=0x8f => Head::Map(usize::from(m & 0x0f)),
        0x90..=0x9f => Head::Array(usize::from(m & 0x0f)),
        0xa0..=0xbf => Head::Str(usize::from(m & 0x1f)),
        0xc0 => Head::Nil,
        0xc2 => Head::Bool(false),
        0xc3 => Head::Bool(true),
        0xc4 => Head::Bin(c.be(1)? as usize),
        0xc5 => Head::Bin(c.be(2)? as usize),
        0xc6 => Head::Bin(c.be(4)? as usize),
        0xca => Head::Float(f64::from(f32::from_bits(c.be(4)? as u32))),
        0xcb => Head::Float(f64::from_bits(c.be(8)?)),
        0xcc => Head::Int(i128::from(c.be(1)?)),
        0xcd => Head::Int(i128::from(c.be(2)?)),
        0xce => Head::Int(i128::from(c.be(4)?)),
        0xcf => Head::Int(i128::from(c.be(8)?)),
        0xd0 => Head::Int(i128::from(c.be(1)? as u8 as i8)),
        0xd1 => Head::Int(i128::from(c.be(2)? as u16 as i16)),
        0xd2 => Head::Int(i128::from(c.be(4)? as u32 as i32)),
        0xd3 => Head::Int(i128::from(c.be(8)? as i64)),
        0xd9 => Head::Str(c.be(1)? as usize),
        0xda => Head::Str(c.be(2)? as usize),
        0xdb => Head::Str(c.be(4)? as usize),
        0xdc => Head::Array(c.be(2)? as usize),
        0xdd => Head::Array(c.be(4)? as usize),
        0xde => Head::Map(c.be(2)? as usize),
        0xdf => Head::Map(c.be(4)? as usize),
        0xe0..=0xff => Head::Int(i128::from(m as i8)),
        0xc1 => return Err(DecodeError::Invalid("reserved marker 0xc1".into())),
        0xc7..=0xc9 | 0xd4..=0xd8 => return Err(DecodeError::Invalid(format!("ext type 0x{m:02x} is not used by borg"))),
    })
}

fn skip(c: &mut Cursor<'_>, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Invalid(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    match head(c)? {
        Head::Str(n) | Head::Bin(n) => {
            c.take(n)?;
        }
        Head::Array(n) => {
            for _ in 0..n {
                skip(c, depth + 1)?;
            }
        }
        Head::Map(n) => {
            for _ in 0..n.saturating_mul(2) {
                skip(c, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Returns the length of the first complete value in `buf`, never reading past `limit` bytes.
pub fn check(buf: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let mut c = Cursor { buf, pos: 0, limit };
    skip(&mut c, 0)?;
    Ok(c.pos)
}

fn value<'a>(c: &mut Cursor<'a>, depth: usize) -> Result<Value<'a>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Invalid(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match head(c)? {
        Head::Nil => Value::Nil,
        Head::Bool(b) => Value::Bool(b),
        Head::Int(i) => Value::Int(i),
        Head::Float(f) => Value::Float(f),
        Head::Str(n) => {
            let raw = c.take(n)?;
            Value::Str(std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid("str is not valid utf-8".into()))?)
        }
        Head::Bin(n) => Value::Bin(c.take(n)?),
        Head::Array(n) => {
            // Each element takes at least one byte, so a checked value bounds the allocation.
            let mut items = Vec::with_capacity(n.min(c.buf.len() - c.pos));
            for _ in 0..n {
                items.push(value(c, depth + 1)?);
            }
            Value::Array(items)
        }
        Head::Map(n) => {
            let mut items = Vec::with_capacity(n.min((c.buf.len() - c.pos) / 2));
            for _ in 0..n {
                let k = value(c, depth + 1)?;
                let v = value(c, depth + 1)?;
                items.push((k, v));
            }
            Value::Map(items)
        }
    })
}

/// Parses one complete value (as measured by [`check`]) from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Value<'_>, DecodeError> {
    let mut c = Cursor { buf, pos: 0, limit: buf.len() };
    value(&mut c, 0)
}

/// Where a message's *last* value is a binary whose header is already buffered: returns
/// (header start, header end, binary length). Everything before it must be complete. Lets a
/// large `put` be parsed up to its data and the data be streamed to disk as it arrives.
pub fn trailing_bin(buf: &[u8]) -> Option<(usize, usize, usize)> {
    fn walk(c: &mut Cursor<'_>, depth: usize, last: bool) -> Result<Option<(usize, usize, usize)>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::Invalid("too deep".into()));
        }
        let start = c.pos;
        match head(c)? {
            Head::Bin(n) if last => return Ok(Some((start, c.pos, n))),
            Head::Str(n) | Head::Bin(n) => {
                c.take(n)?;
            }
            Head::Array(n) => {
                for i in 0..n {
                    if let Some(r) = walk(c, depth + 1, last && i + 1 == n)? {
                        return Ok(Some(r));
                    }
                }
            }
            Head::Map(n) => {
                for i in 0..n.saturating_mul(2) {
                    if let Some(r) = walk(c, depth + 1, last && i + 1 == 2 * n)? {
                        return Ok(Some(r));
                    }
                }
            }
            _ => {}
        }
        Ok(None)
    }
    let mut c = Cursor { buf, pos: 0, limit: usize::MAX };
    walk(&mut c, 0, true).ok().flatten()
}

/// Appends msgpack encodings to a byte vector; the inverse of [`parse`] for what we send.
pub mod encode {
    /// Encodes nil (Python `None`).
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }

    /// Encodes a boolean.
    pub fn bool(out: &mut Vec<u8>, b: bool) {
        out.push(if b { 0xc3 } else { 0xc2 });
    }

    /// Encodes an integer in its smallest msgpack form, as Python's msgpack does.
    pub fn int(out: &mut Vec<u8>, i: i64) {
        if i >= 0 {
            uint(out, i as u64);
        } else if i >= -32 {
            out.push(i as i8 as u8);
        } else if i >= i64::from(i8::MIN) {
            out.push(0xd0);
            out.push(i as i8 as u8);
        } else if i >= i64::from(i16::MIN) {
            out.push(0xd1);
            out.extend_from_slice(&(i as i16).to_be_bytes());
        } else if i >= i64::from(i32::MIN) {
            out.push(0xd2);
            out.extend_from_slice(&(i as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }

    /// Encodes a non-negative integer.
    pub fn uint(out: &mut Vec<u8>, u: u64) {
        if u < 0x80 {
            out.push(u as u8);
        } else if u <= 0xff {
            out.push(0xcc);
            out.push(u as u8);
        } else if u <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(u as u16).to_be_bytes());
        } else if u <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(u as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&u.to_be_bytes());
        }
    }

    /// Encodes a float as float64.
    pub fn float(out: &mut Vec<u8>, f: f64) {
        out.push(0xcb);
        out.extend_from_slice(&f.to_bits().to_be_bytes());
    }

    /// Encodes a utf-8 string (msgpack str).
    pub fn str(out: &mut Vec<u8>, s: &str) {
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= 0xff {
            out.push(0xd9);
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// Encodes only the header of a binary of `n` bytes; the caller appends the bytes.
    pub fn bin_header(out: &mut Vec<u8>, n: usize) {
        if n <= 0xff {
            out.push(0xc4);
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    /// Encodes a binary (msgpack bin, Python `bytes`).
    pub fn bin(out: &mut Vec<u8>, b: &[u8]) {
        bin_header(out, b.len());
        out.extend_from_slice(b);
    }

    /// Encodes an array header for `n` elements that follow.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        if n < 16 {
            out.push(0x90 | n as u8);
        } else if n <= 0xffff {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdd);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    /// Encodes a map header for `n` key/value pairs that follow.
    pub fn map(out: &mut Vec<u8>, n: usize) {
        if n < 16 {
            out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            out.push(0xde);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdf);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_map() -> Vec<u8> {
        let mut out = Vec::new();
        encode::map(&mut out, 3);
        encode::str(&mut out, "i");
        encode::int(&mut out, 7);
        encode::str(&mut out, "m");
        encode::str(&mut out, "get");
        encode::str(&mut out, "a");
        encode::map(&mut out, 2);
        encode::str(&mut out, "id");
        encode::bin(&mut out, &[1u8; 32]);
        encode::str(&mut out, "n");
        encode::int(&mut out, -1000);
        out
    }

    #[test]
    fn check_then_parse_roundtrip() {
        let buf = roundtrip_map();
        assert_eq!(check(&buf, 1 << 20), Ok(buf.len()));
        let v = parse(&buf).unwrap();
        assert_eq!(v.get("i"), Some(&Value::Int(7)));
        assert_eq!(v.get("m"), Some(&Value::Str("get")));
        let a = v.get("a").unwrap();
        assert_eq!(a.get("id"), Some(&Value::Bin(&[1u8; 32])));
        assert_eq!(a.get("n"), Some(&Value::Int(-1000)));
    }

    #[test]
    fn every_prefix_is_incomplete_with_a_growing_hint() {
        let buf = roundtrip_map();
        for cut in 0..buf.len() {
            match check(&buf[..cut], 1 << 20) {
                Err(DecodeError::Incomplete { needed }) => assert!(needed > cut && needed <= buf.len()),
                other => panic!("prefix {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn announced_gigabytes_are_refused_before_they_arrive() {
        let buf = [0xc6, 0xff, 0xff, 0xff, 0xf0];
        assert!(matches!(check(&buf, 64 << 20), Err(DecodeError::TooLarge { .. })));
        let arr = [0xdd, 0xff, 0xff, 0xff, 0xff];
        // a huge element count is only "incomplete" (each element needs bytes we do not have)
        assert!(matches!(check(&arr, 64 << 20), Err(DecodeError::Incomplete { .. })));
    }

    #[test]
    fn nesting_and_reserved_markers_are_invalid() {
        let deep = vec![0x91u8; MAX_DEPTH + 2];
        assert!(matches!(check(&deep, 1 << 20), Err(DecodeError::Invalid(_))));
        assert!(matches!(check(&[0xc1], 10), Err(DecodeError::Invalid(_))));
        assert!(matches!(check(&[0xd4, 0, 0], 10), Err(DecodeError::Invalid(_))));
        assert!(matches!(parse(&[0xa1, 0xff]), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn trailing_binary_is_found_before_it_arrives() {
        let mut b = Vec::new();
        encode::map(&mut b, 3);
        encode::str(&mut b, "i");
        encode::int(&mut b, 5);
        encode::str(&mut b, "m");
        encode::str(&mut b, "put");
        encode::str(&mut b, "a");
        encode::map(&mut b, 2);
        encode::str(&mut b, "id");
        encode::bin(&mut b, &[9; 32]);
        encode::str(&mut b, "data");
        let start = b.len();
        encode::bin_header(&mut b, 3_000_000);
        let end = b.len();
        b.extend_from_slice(&[1, 2, 3]); // only the first bytes of the data have arrived
        assert_eq!(trailing_bin(&b), Some((start, end, 3_000_000)));
        assert_eq!(trailing_bin(&b[..start - 3]), None, "id not complete yet");
        // the last value is not a binary: no streaming
        let mut m = Vec::new();
        encode::map(&mut m, 1);
        encode::str(&mut m, "i");
        encode::int(&mut m, 1);
        assert_eq!(trailing_bin(&m), None);
    }

    #[test]
    fn integers_use_python_compatible_widths() {
        for (i, expect) in [(0i64, vec![0x00]), (127, vec![0x7f]), (128, vec![0xcc, 0x80]), (-1, vec![0xff]),
            (-33, vec![0xd0, 0xdf]), (70000, vec![0xce, 0, 1, 0x11, 0x70])] {
            let mut out = Vec::new();
            encode::int(&mut out, i);
            assert_eq!(out, expect, "{i}");
            assert_eq!(parse(&out).unwrap(), Value::Int(i128::from(i)));
        }
    }
}
