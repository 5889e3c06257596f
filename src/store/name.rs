//! Store item names: borgstore's validation rules and its nesting scheme.
//!
//! Names are checked before anything touches the disk and again when listing ("no crap in, no
//! crap out"), so a hostile client cannot address a path outside the store and files that are not
//! ours (temp files of a writer in progress, stray files) never show up in a listing.

use super::Error;

/// Longest name borgstore accepts (before nesting and suffixes).
pub const MAX_NAME_LENGTH: usize = 100;
/// Suffix of temp files being written; never a valid name, so never listed.
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix of soft-deleted items.
pub const DEL_SUFFIX: &str = ".del";
/// Suffix of hidden internal files, which clients may not address.
pub const HID_SUFFIX: &str = ".hid";

/// Appends the lower-case hex digits of `bytes`: object names are ids in hex, and this is on
/// every put's path (formatting each byte with `format!` was more than half of a put's
/// user-space instructions under callgrind).
pub fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

// What `validate` needs to know of each byte: one bit per rule.
const NON_ASCII: u8 = 1;
const DOT: u8 = 2;
const BLANK: u8 = 4;
const UPPER: u8 = 8;
const CONTROL: u8 = 16;

/// The rule bits of every byte value.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if !c.is_ascii() {
            NON_ASCII
        } else if c == b'.' {
            DOT
        } else if c == b'\\' || c == b' ' {
            BLANK
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_control() {
            CONTROL
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Checks a name the way borgstore's `validate_name` does, with the reason in the error.
///
/// Every put's name passes through here, so its bytes are classified in one pass through a
/// table (eight scans were a tenth of a put's user-space instructions under callgrind), and
/// `..` is looked for only in names with a dot (object names have none); the rules are then
/// judged in borgstore's order, so a name breaking several gets the same error as there.
pub fn validate(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidName { name: name.chars().take(120).collect(), why: why.to_string() });
    if name.len() > MAX_NAME_LENGTH {
        return bad("name is too long (max: 100)");
    }
    let class = name.bytes().fold(0u8, |acc, b| acc | CLASS[usize::from(b)]);
    if class & NON_ASCII != 0 {
        return bad("name must be plain ascii");
    }
    if name.starts_with('/') || name.ends_with('/') || (class & DOT != 0 && name.contains("..")) {
        return bad("name must be relative and not contain '..'");
    }
    if class & BLANK != 0 {
        return bad("name must not contain backslashes or blanks");
    }
    if class & UPPER != 0 {
        return bad("name must be lowercase");
    }
    if class & CONTROL != 0 {
        return bad("name must not contain control characters");
    }
    if name.ends_with(TMP_SUFFIX) {
        return bad("name must not end with .tmp");
    }
    if name.ends_with(HID_SUFFIX) {
        return bad("name must not end with .hid");
    }
    Ok(())
}

/// `namespace/12345678` at 2 levels becomes `namespace/12/34/12345678` (borgstore's `nest`).
pub fn nest(name: &str, levels: usize, suffix: Option<&str>) -> String {
    let mut out = String::with_capacity(name.len() + 3 * levels + 4);
    if levels > 0 {
        let (namespace, key) = match name.rsplit_once('/') {
            Some((ns, key)) => (Some(ns), key),
            None => (None, name),
        };
        if let Some(ns) = namespace {
            out.push_str(ns);
            out.push('/');
        }
        for level in 0..levels {
            // keys shorter than the nesting depth get shorter (possibly empty) directory parts,
            // exactly like Python's slicing does.
            let part = key.get(2 * level..(2 * level + 2).min(key.len())).unwrap_or("");
            out.push_str(part);
            out.push('/');
        }
        out.push_str(key);
    } else {
        out.push_str(name);
    }
    if let Some(s) = suffix {
        out.push_str(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_matches_borgstore() {
        assert_eq!(nest("data/0123456789", 2, None), "data/01/23/0123456789");
        assert_eq!(nest("data/0123456789", 0, None), "data/0123456789");
        assert_eq!(nest("archives/ab", 0, Some(".del")), "archives/ab.del");
        assert_eq!(nest("data/abcd", 1, Some(".del")), "data/ab/abcd.del");
    }

    /// A name breaking several rules gets the reason borgstore would give: rules in its order.
    #[test]
    fn the_first_rule_broken_in_borgstore_order_is_reported() {
        let why = |n: &str| match validate(n) {
            Err(Error::InvalidName { why, .. }) => why,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(why("Ä b/../x"), "name must be plain ascii");
        assert_eq!(why("A b/../x"), "name must be relative and not contain '..'");
        assert_eq!(why("A b/x"), "name must not contain backslashes or blanks");
        assert_eq!(why("A\tb.tmp"), "name must be lowercase");
        assert_eq!(why("a\tb.tmp"), "name must not contain control characters");
        assert_eq!(why("a.b.tmp"), "name must not end with .tmp");
        assert!(validate("data/0123abcdef.x").is_ok());
        assert!(validate("a.b").is_ok(), "single dots are fine");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["/etc/passwd", "../x", "data/../../x", "a b", "a\\b", "Config", "x.tmp", "x.hid",
            "dir/", "ünï", "a\nb", &"x".repeat(101)] {
            assert!(validate(bad).is_err(), "{bad:?} should be invalid");
        }
        for good in ["config/manifest", "data/00/11/0011", "locks/abc", &"x".repeat(100)] {
            assert!(validate(good).is_ok(), "{good:?} should be valid");
        }
    }
}
