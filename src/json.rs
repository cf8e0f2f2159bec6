//! JSON text: an encoder that writes straight into a `String`, and a small decoder for the client.
//!
//! Invariants: encoding cannot fail and always produces valid JSON (strings escaped per RFC 8259,
//! plus U+2028/U+2029 so the output is also safe inside JavaScript; non-finite numbers become
//! `null`); decoding accepts exactly RFC 8259 and caps nesting depth at [`MAX_DEPTH`] (and the
//! number of values at what the caller expects, [`decode_at_most`]). The decoder
//! keeps integers written as plain digits exact up to `u64::MAX`, rounds every other number to
//! the nearest `f64` however long its digits or exponent, and rejects numbers too large for an
//! `f64` (RFC 8259 §9 lets a parser limit their range). Errors name the byte that broke the text.

/// Deepest nesting of arrays and objects the decoder accepts. The decoder recurses once per
/// level, so this also bounds its stack use; a hostile body cannot overflow the stack.
pub const MAX_DEPTH: usize = 128;

/// No escape needed: the byte is copied as part of a run.
const COPY: u8 = 0;
/// Escaped as `\u00XX`.
const UNICODE: u8 = b'u';
/// First byte of U+2028/U+2029 (`E2 80 A8`/`E2 80 A9`): look at the next two bytes.
const MAYBE_SEPARATOR: u8 = b'!';

/// What to write for each byte of a string: `COPY`, a short escape letter (`\n` → `n`), `UNICODE`,
/// or `MAYBE_SEPARATOR`. RFC 8259 §7 requires escaping `"`, `\` and U+0000 to U+001F.
static ESCAPE: [u8; 256] = build_escape_table();

const fn build_escape_table() -> [u8; 256] {
    let mut table = [COPY; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = UNICODE;
        byte += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0C] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0xE2] = MAYBE_SEPARATOR;
    table
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `value` as a JSON string literal (with quotes), escaping `"`, `\`, control characters
/// and U+2028/U+2029.
pub fn write_string(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    let mut run_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let action = ESCAPE[bytes[index] as usize];
        if action == COPY {
            index += 1;
            continue;
        }
        if action == MAYBE_SEPARATOR {
            // U+2028 is E2 80 A8 and U+2029 is E2 80 A9; other E2 sequences are copied.
            let is_separator = bytes.get(index + 1) == Some(&0x80)
                && matches!(bytes.get(index + 2), Some(0xA8) | Some(0xA9));
            if !is_separator {
                index += 1;
                continue;
            }
            out.push_str(&value[run_start..index]);
            out.push_str(if bytes[index + 2] == 0xA8 {
                "\\u2028"
            } else {
                "\\u2029"
            });
            index += 3;
            run_start = index;
            continue;
        }
        // Every other escaped byte is ASCII, so the slice boundaries are char boundaries.
        out.push_str(&value[run_start..index]);
        out.push('\\');
        if action == UNICODE {
            let byte = bytes[index];
            out.push_str("u00");
            out.push(HEX_DIGITS[(byte >> 4) as usize] as char);
            out.push(HEX_DIGITS[(byte & 0xF) as usize] as char);
        } else {
            out.push(action as char);
        }
        index += 1;
        run_start = index;
    }
    out.push_str(&value[run_start..]);
    out.push('"');
}

/// Writes a number; NaN and infinities become `null`. Finite values round-trip exactly: Rust
/// prints the shortest digits that read back as the same `f64`. Magnitudes in `[1e-7, 1e21)` are
/// written without an exponent (`3`, `0.1`, `-0`), others with one (`1e300`, `5e-324`), as
/// JavaScript does, so huge and tiny values stay short.
pub fn write_f64(out: &mut String, value: f64) {
    use std::fmt::Write as _;
    if !value.is_finite() {
        out.push_str("null");
        return;
    }
    let magnitude = value.abs();
    // Writing into a String cannot fail.
    let _ = if magnitude == 0.0 || (1e-7..1e21).contains(&magnitude) {
        write!(out, "{value}")
    } else {
        write!(out, "{value:e}")
    };
}

/// Builds one JSON object in place: `{`, then `"key":value` pairs separated by commas, then `}`.
pub struct ObjectWriter<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    /// Writes `{`.
    pub fn new(out: &'a mut String) -> ObjectWriter<'a> {
        out.push('{');
        ObjectWriter { out, empty: true }
    }
    /// Writes the separator and `"key":`, and hands back the buffer for a value the caller writes
    /// (a nested object, an array, pre-encoded JSON).
    pub fn key(&mut self, key: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        write_string(self.out, key);
        self.out.push(':');
        self.out
    }
    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        write_string(self.key(key), value);
        self
    }
    /// `None` is written as `null`.
    pub fn optional_string(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(text) => self.string(key, text),
            None => self.null(key),
        }
    }
    /// `None` is written as `null`.
    pub fn optional_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(number) => self.u64(key, number),
            None => self.null(key),
        }
    }
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        push_display(self.key(key), value);
        self
    }
    pub fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        write_f64(self.key(key), value);
        self
    }
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).push_str("null");
        self
    }
    /// Writes `}`.
    pub fn finish(self) {
        self.out.push('}');
    }
}

/// Builds one JSON array in place: `[`, then values separated by commas, then `]`.
pub struct ArrayWriter<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> ArrayWriter<'a> {
    /// Writes `[`.
    pub fn new(out: &'a mut String) -> ArrayWriter<'a> {
        out.push('[');
        ArrayWriter { out, empty: true }
    }
    /// Writes the separator, and hands back the buffer for a value the caller writes (a nested
    /// object, an array, pre-encoded JSON).
    pub fn item(&mut self) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out
    }
    pub fn string(&mut self, value: &str) -> &mut Self {
        write_string(self.item(), value);
        self
    }
    /// Writes `]`.
    pub fn finish(self) {
        self.out.push(']');
    }
}

fn push_display(out: &mut String, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(out, "{value}");
}

/// A decoded JSON value. Objects keep their members in document order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number written as digits alone (no sign, fraction or exponent) that fits in a `u64`,
    /// kept exact: an `f64` holds integers exactly only below 2^53, and seeds and counters go
    /// beyond that.
    Integer(u64),
    /// Every other number, rounded to the nearest `f64`.
    Number(f64),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// Why a text is not JSON, with the byte offset where it went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The text ended inside a value (or was empty).
    UnexpectedEnd { offset: usize },
    /// A byte that cannot start a value here.
    ExpectedValue { offset: usize },
    /// A specific token was required: `:`, `,` or a closing bracket, a member name.
    Expected {
        offset: usize,
        expected: &'static str,
    },
    /// A literal that is not exactly `true`, `false` or `null`; the offset is the first byte
    /// that differs.
    InvalidLiteral { offset: usize },
    /// A number outside the RFC 8259 grammar (`01`, `-x`, `1.e5`, `1e+x`); the offset is the
    /// byte that broke it. (`+1` and `.5` cannot start a value: [`DecodeError::ExpectedValue`].)
    InvalidNumber { offset: usize },
    /// A number whose magnitude does not fit in an `f64`; the offset is where it starts.
    NumberOutOfRange { offset: usize },
    /// An unescaped control character (U+0000 to U+001F) inside a string.
    ControlCharacterInString { offset: usize },
    /// A backslash followed by something other than the eight escapes RFC 8259 defines, or a
    /// `\u` with a byte that is not a hex digit; the offset is that byte.
    InvalidEscape { offset: usize },
    /// A `\uD800`-`\uDFFF` escape that is not half of a well-formed surrogate pair; the offset
    /// is where the missing or wrong half is (or the low half that has no high half before it).
    LoneSurrogate { offset: usize },
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep { offset: usize },
    /// More values (each array, object, member value, item and scalar counts one) than the
    /// caller of [`decode_at_most`] allowed; the offset is where the first one too many starts.
    TooManyValues { offset: usize, limit: usize },
    /// Something other than whitespace after the document.
    TrailingCharacters { offset: usize },
}

impl DecodeError {
    /// The byte offset in the text where decoding failed.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::UnexpectedEnd { offset }
            | DecodeError::ExpectedValue { offset }
            | DecodeError::Expected { offset, .. }
            | DecodeError::InvalidLiteral { offset }
            | DecodeError::InvalidNumber { offset }
            | DecodeError::NumberOutOfRange { offset }
            | DecodeError::ControlCharacterInString { offset }
            | DecodeError::InvalidEscape { offset }
            | DecodeError::LoneSurrogate { offset }
            | DecodeError::TooDeep { offset }
            | DecodeError::TooManyValues { offset, .. }
            | DecodeError::TrailingCharacters { offset } => offset,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid json at byte {}: ", self.offset())?;
        match self {
            DecodeError::UnexpectedEnd { .. } => f.write_str("unexpected end of input"),
            DecodeError::ExpectedValue { .. } => f.write_str("expected a value"),
            DecodeError::Expected { expected, .. } => write!(f, "expected {expected}"),
            DecodeError::InvalidLiteral { .. } => f.write_str("invalid literal"),
            DecodeError::InvalidNumber { .. } => f.write_str("invalid number"),
            DecodeError::NumberOutOfRange { .. } => f.write_str("number out of range"),
            DecodeError::ControlCharacterInString { .. } => {
                f.write_str("control character in string")
            }
            DecodeError::InvalidEscape { .. } => f.write_str("invalid escape"),
            DecodeError::LoneSurrogate { .. } => f.write_str("lone surrogate"),
            DecodeError::TooDeep { .. } => {
                write!(f, "nesting deeper than {MAX_DEPTH}")
            }
            DecodeError::TooManyValues { limit, .. } => {
                write!(f, "more than the {limit} values expected")
            }
            DecodeError::TrailingCharacters { .. } => f.write_str("trailing characters"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Parses one JSON document (surrounding whitespace allowed, nothing else), of any size. The
/// client always knows the shape it expects and uses [`decode_at_most`]; tests take anything.
#[cfg(test)]
pub fn decode(text: &str) -> Result<Value, DecodeError> {
    decode_at_most(text, usize::MAX)
}

/// `decode` for a document of at most `max_values` values. A [`Value`] takes 32 bytes and
/// `[0,0,...]` two bytes of text per value, so without a bound a text of n bytes may take 16 n
/// of memory; a caller that knows the shape it expects keeps that to what the shape needs.
pub fn decode_at_most(text: &str, max_values: usize) -> Result<Value, DecodeError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        position: 0,
        values_left: max_values,
        max_values,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.position < parser.bytes.len() {
        return Err(DecodeError::TrailingCharacters {
            offset: parser.position,
        });
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
    values_left: usize,
    max_values: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    /// After an array item or object member: consumes `,` (false: more follows) or `close`
    /// (true: the container ended).
    fn comma_or_close(&mut self, close: u8, expected: &'static str) -> Result<bool, DecodeError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b',') => {
                self.position += 1;
                Ok(false)
            }
            Some(byte) if byte == close => {
                self.position += 1;
                Ok(true)
            }
            None => Err(DecodeError::UnexpectedEnd {
                offset: self.position,
            }),
            Some(_) => Err(DecodeError::Expected {
                offset: self.position,
                expected,
            }),
        }
    }

    /// RFC 8259 §2: whitespace is exactly space, tab, line feed and carriage return.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.position += 1;
        }
    }

    /// Parses the value at the current position; `depth` counts the enclosing arrays/objects.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let offset = self.position;
        let Some(left) = self.values_left.checked_sub(1) else {
            return Err(DecodeError::TooManyValues {
                offset,
                limit: self.max_values,
            });
        };
        self.values_left = left;
        match self.peek() {
            None => Err(DecodeError::UnexpectedEnd { offset }),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(DecodeError::ExpectedValue { offset }),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, DecodeError> {
        for &expected in word.as_bytes() {
            match self.peek() {
                Some(byte) if byte == expected => self.position += 1,
                Some(_) => {
                    return Err(DecodeError::InvalidLiteral {
                        offset: self.position,
                    })
                }
                None => {
                    return Err(DecodeError::UnexpectedEnd {
                        offset: self.position,
                    })
                }
            }
        }
        Ok(value)
    }

    fn array(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset: self.position,
            });
        }
        self.position += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.position += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            if self.comma_or_close(b']', "',' or ']'")? {
                return Ok(Value::Array(items));
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset: self.position,
            });
        }
        self.position += 1; // '{'
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            match self.peek() {
                Some(b'"') => {}
                None => {
                    return Err(DecodeError::UnexpectedEnd {
                        offset: self.position,
                    })
                }
                Some(_) => {
                    return Err(DecodeError::Expected {
                        offset: self.position,
                        expected: "a member name",
                    })
                }
            }
            let name = self.string()?;
            self.skip_whitespace();
            match self.peek() {
                Some(b':') => self.position += 1,
                None => {
                    return Err(DecodeError::UnexpectedEnd {
                        offset: self.position,
                    })
                }
                Some(_) => {
                    return Err(DecodeError::Expected {
                        offset: self.position,
                        expected: "':'",
                    })
                }
            }
            self.skip_whitespace();
            let value = self.value(depth)?;
            members.push((name, value));
            if self.comma_or_close(b'}', "',' or '}'")? {
                return Ok(Value::Object(members));
            }
        }
    }

    /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<Value, DecodeError> {
        let start = self.position;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.position += 1;
        }
        let integer_start = self.position;
        match self.peek() {
            Some(b'0') => {
                self.position += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.invalid_number());
                }
            }
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(self.invalid_number()),
        }
        let integer_end = self.position;
        let mut fraction_end = integer_end;
        if self.peek() == Some(b'.') {
            self.position += 1;
            self.require_digit()?;
            self.skip_digits();
            fraction_end = self.position;
        }
        let mut exponent_digits = None;
        if let Some(b'e' | b'E') = self.peek() {
            self.position += 1;
            let sign = self.position;
            if let Some(b'+' | b'-') = self.peek() {
                self.position += 1;
            }
            let digits_start = self.position;
            self.require_digit()?;
            self.skip_digits();
            exponent_digits = Some((self.bytes[sign] == b'-', digits_start));
        }
        let digits = &self.text[integer_start..integer_end];
        if !negative && fraction_end == integer_end && exponent_digits.is_none() {
            if let Ok(integer) = digits.parse::<u64>() {
                return Ok(Value::Integer(integer));
            }
        }
        let number = match exponent_digits {
            Some((exponent_negative, digits_start))
                if self.bytes[digits_start..self.position]
                    .iter()
                    .skip_while(|&&digit| digit == b'0')
                    .count()
                    > LONGEST_EXPONENT_FOR_STD =>
            {
                let fraction = self.text.get(integer_end + 1..fraction_end).unwrap_or("");
                let exponent = saturating_decimal(&self.bytes[digits_start..self.position]);
                let exponent = if exponent_negative {
                    -exponent
                } else {
                    exponent
                };
                parse_with_long_exponent(negative, digits, fraction, exponent)
            }
            // The grammar above is a subset of what `f64::from_str` accepts, so this cannot
            // fail; map it to an error anyway rather than trusting that.
            _ => self.text[start..self.position]
                .parse()
                .map_err(|_| DecodeError::InvalidNumber { offset: start })?,
        };
        if !number.is_finite() {
            return Err(DecodeError::NumberOutOfRange { offset: start });
        }
        Ok(Value::Number(number))
    }

    /// A number cannot go on here: the end of the text, or the byte that does not fit.
    fn invalid_number(&self) -> DecodeError {
        match self.peek() {
            None => DecodeError::UnexpectedEnd {
                offset: self.position,
            },
            Some(_) => DecodeError::InvalidNumber {
                offset: self.position,
            },
        }
    }

    /// After `.`, `e`, `e+` or `e-` a digit must follow.
    fn require_digit(&self) -> Result<(), DecodeError> {
        match self.peek() {
            Some(b'0'..=b'9') => Ok(()),
            _ => Err(self.invalid_number()),
        }
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.position += 1;
        }
    }

    /// A string literal starting at the opening quote; unescaped runs are copied as slices.
    fn string(&mut self) -> Result<String, DecodeError> {
        self.position += 1; // '"'
        let mut result = String::new();
        let mut run_start = self.position;
        loop {
            let offset = self.position;
            match self.peek() {
                None => return Err(DecodeError::UnexpectedEnd { offset }),
                Some(b'"') => {
                    result.push_str(&self.text[run_start..offset]);
                    self.position += 1;
                    return Ok(result);
                }
                Some(b'\\') => {
                    result.push_str(&self.text[run_start..offset]);
                    self.position += 1;
                    let character = self.escape(offset)?;
                    result.push(character);
                    run_start = self.position;
                }
                Some(0x00..=0x1F) => return Err(DecodeError::ControlCharacterInString { offset }),
                // Multi-byte UTF-8 continues the run; the text is already valid UTF-8.
                Some(_) => self.position += 1,
            }
        }
    }

    /// The escape after a backslash at `backslash`; leaves the position after it.
    fn escape(&mut self, backslash: usize) -> Result<char, DecodeError> {
        let Some(letter) = self.peek() else {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.position,
            });
        };
        self.position += 1;
        let character = match letter {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(backslash),
            _ => {
                return Err(DecodeError::InvalidEscape {
                    offset: backslash + 1,
                })
            }
        };
        Ok(character)
    }

    /// `XXXX` after `\u`, joining a UTF-16 surrogate pair written as two escapes.
    fn unicode_escape(&mut self, backslash: usize) -> Result<char, DecodeError> {
        let first = self.hex4()?;
        let code_point = match first {
            0xD800..=0xDBFF => {
                let low_half = self.position;
                match self.bytes.get(low_half..low_half + 2) {
                    Some(b"\\u") => {}
                    // `"\ud800` and nothing more: the text ended, not a wrong escape.
                    None if matches!(self.bytes.get(low_half), None | Some(b'\\')) => {
                        return Err(DecodeError::UnexpectedEnd {
                            offset: self.bytes.len(),
                        })
                    }
                    _ => return Err(DecodeError::LoneSurrogate { offset: low_half }),
                }
                self.position += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(DecodeError::LoneSurrogate { offset: low_half });
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(DecodeError::LoneSurrogate { offset: backslash }),
            other => other,
        };
        // Surrogates are handled above, so every other value up to 0x10FFFF is a char.
        char::from_u32(code_point).ok_or(DecodeError::InvalidEscape { offset: backslash })
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let mut code = 0u32;
        for _ in 0..4 {
            let offset = self.position;
            let digit = match self.peek() {
                None => return Err(DecodeError::UnexpectedEnd { offset }),
                Some(byte) => (byte as char)
                    .to_digit(16)
                    .ok_or(DecodeError::InvalidEscape { offset })?,
            };
            code = code * 16 + digit;
            self.position += 1;
        }
        Ok(code)
    }
}

/// Exponents with more significant digits than this go around `f64::from_str`: Rust's parser
/// stops counting an exponent at about 655,360, so `0.<700,000 zeros>1e700001` (exactly 1)
/// came out as 0. Below 100,000 it is exact, and such numbers are all we ever meet.
const LONGEST_EXPONENT_FOR_STD: usize = 5;

/// The value of ASCII digits, stopping at `i64::MAX / 4` (far beyond any exponent that matters,
/// and room left to add a digit count without overflow).
fn saturating_decimal(digits: &[u8]) -> i64 {
    const CAP: i64 = i64::MAX / 4;
    digits.iter().fold(0i64, |value, &digit| {
        value
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'))
            .min(CAP)
    })
}

/// A number whose exponent is too long for `f64::from_str`: moves the decimal point to just
/// before the first significant digit, so the exponent left over is small (or the value is
/// plainly zero or out of range), and lets std round the digits.
fn parse_with_long_exponent(negative: bool, integer: &str, fraction: &str, exponent: i64) -> f64 {
    let sign = if negative { -1.0 } else { 1.0 };
    let leading_zeros = integer.bytes().take_while(|&digit| digit == b'0').count();
    let (significant, point) = if leading_zeros == integer.len() {
        // The integer part is all zeros (it is "0"): the significant digits are in the fraction.
        let fraction_zeros = fraction.bytes().take_while(|&digit| digit == b'0').count();
        ([&fraction[fraction_zeros..], ""], -(fraction_zeros as i64))
    } else {
        (
            [&integer[leading_zeros..], fraction],
            (integer.len() - leading_zeros) as i64,
        )
    };
    if significant
        .iter()
        .all(|part| part.bytes().all(|digit| digit == b'0'))
    {
        return sign * 0.0;
    }
    // The value is 0.<significant> × 10^scale, so 10^(scale-1) <= |value| < 10^scale.
    let scale = point.saturating_add(exponent);
    if scale > 400 {
        return sign * f64::INFINITY;
    }
    if scale < -400 {
        return sign * 0.0;
    }
    let mut text = String::with_capacity(significant[0].len() + significant[1].len() + 8);
    text.push_str("0.");
    text.push_str(significant[0]);
    text.push_str(significant[1]);
    text.push('e');
    text.push_str(&scale.to_string());
    // Digits and a short exponent: within what `f64::from_str` accepts and rounds exactly.
    sign * text.parse::<f64>().unwrap_or(f64::NAN)
}

/// 2^53: every integer below it is an exact `f64`. 2^53 itself is not trustworthy as a decoded
/// `f64`: `9007199254740993.0` rounds to it, so a number that decoded to 2^53 may have been
/// either. (Written as digits alone, both are a [`Value::Integer`] and exact.)
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

impl Value {
    /// The first member named `key` of an object; `None` for non-objects.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(name, _)| name == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(integer) => Some(*integer as f64),
            Value::Number(number) => Some(*number),
            _ => None,
        }
    }
    /// A non-negative integer known exactly: written as digits alone, or a number such as `2.0`
    /// or `1e3` that is an integer below 2^53.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Integer(integer) => Some(*integer),
            Value::Number(number)
                if *number >= 0.0 && number.fract() == 0.0 && *number < MAX_EXACT_INTEGER =>
            {
                Some(*number as u64)
            }
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &str) -> String {
        let mut out = String::new();
        write_string(&mut out, value);
        out
    }

    fn number(value: f64) -> String {
        let mut out = String::new();
        write_f64(&mut out, value);
        out
    }

    #[test]
    fn every_control_character_is_escaped() {
        let short_forms = [
            (0x08, "\\b"),
            (0x09, "\\t"),
            (0x0A, "\\n"),
            (0x0C, "\\f"),
            (0x0D, "\\r"),
        ];
        for byte in 0u8..0x20 {
            let expected = match short_forms.iter().find(|(b, _)| *b == byte) {
                Some((_, short)) => short.to_string(),
                None => format!("\\u{byte:04x}"),
            };
            let text = (byte as char).to_string();
            assert_eq!(
                encoded(&text),
                format!("\"{expected}\""),
                "byte {byte:#04x}"
            );
            assert_eq!(decode(&encoded(&text)).unwrap(), Value::String(text));
        }
        assert_eq!(encoded("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn escaping_table() {
        let cases = [
            ("", r#""""#),
            ("plain", r#""plain""#),
            ("a\"b", r#""a\"b""#),
            ("back\\slash", r#""back\\slash""#),
            ("line\nbreak\r\n", r#""line\nbreak\r\n""#),
            ("slash/", r#""slash/""#),
            ("é ü 日本 🦀", "\"é ü 日本 🦀\""),
            ("js\u{2028}x\u{2029}", r#""js\u2028x\u2029""#),
            // Other characters whose UTF-8 starts with E2 are copied.
            ("\u{2027}\u{202A}\u{20AC}", "\"\u{2027}\u{202A}\u{20AC}\""),
            ("\u{2028}", r#""\u2028""#),
            ("end\u{0}", r#""end\u0000""#),
        ];
        for (input, expected) in cases {
            assert_eq!(encoded(input), expected, "{input:?}");
        }
    }

    #[test]
    fn numbers_are_written_shortest_and_non_finite_as_null() {
        let cases = [
            (3.0, "3"),
            (-3.0, "-3"),
            (0.0, "0"),
            (-0.0, "-0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (123456.789, "123456.789"),
            (1e20, "100000000000000000000"),
            (1e21, "1e21"),
            (1e300, "1e300"),
            (1e-7, "0.0000001"),
            (1.5e-8, "1.5e-8"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
            (f64::NEG_INFINITY, "null"),
        ];
        for (value, expected) in cases {
            assert_eq!(number(value), expected, "{value:?}");
        }
    }

    #[test]
    fn floats_round_trip() {
        let values = [
            0.1,
            0.2 + 0.1,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            -0.0,
            1.0 / 3.0,
            9_007_199_254_740_993.0,
            123e-20,
            2.5e-7,
            -98765.4321e15,
        ];
        for value in values {
            let text = number(value);
            let decoded = decode(&text).unwrap().as_f64().unwrap();
            assert_eq!(decoded.to_bits(), value.to_bits(), "{value:?} as {text}");
        }
        // A deterministic sweep of bit patterns.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let value = f64::from_bits(state);
            if value.is_finite() {
                let decoded = decode(&number(value)).unwrap().as_f64().unwrap();
                assert_eq!(decoded.to_bits(), value.to_bits());
            }
        }
    }

    #[test]
    fn tricky_strings_round_trip() {
        let strings = [
            "",
            "\"\\/\u{8}\u{c}\n\r\t",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "\u{2028}\u{2029}",
            "日本語 🦀 \u{10FFFF} \u{FFFF} \u{E000}",
            "emoji 😀 family 👨‍👩‍👧",
            "\\u0041 is not an escape here",
        ];
        for text in strings {
            assert_eq!(
                decode(&encoded(text)).unwrap(),
                Value::String(text.to_string())
            );
        }
    }

    #[test]
    fn writers_build_objects_and_arrays() {
        let mut out = String::new();
        let mut object = ObjectWriter::new(&mut out);
        object
            .string("name", "a\"b")
            .optional_string("missing", None)
            .optional_string("present", Some("x"))
            .u64("count", u64::MAX)
            .f64("ratio", 0.25)
            .f64("nan", f64::NAN)
            .bool("ok", true)
            .null("nothing");
        let mut array = ArrayWriter::new(object.key("list"));
        array.string("two");
        write_f64(array.item(), 3.5);
        ArrayWriter::new(array.item()).finish();
        array.finish();
        ObjectWriter::new(object.key("empty")).finish();
        object.finish();
        assert_eq!(
            out,
            r#"{"name":"a\"b","missing":null,"present":"x","count":18446744073709551615,"ratio":0.25,"nan":null,"ok":true,"nothing":null,"list":["two",3.5,[]],"empty":{}}"#
        );
        let decoded = decode(&out).unwrap();
        assert_eq!(decoded.get("name").and_then(Value::as_str), Some("a\"b"));
        assert_eq!(decoded.get("missing"), Some(&Value::Null));
        assert_eq!(
            decoded
                .get("list")
                .and_then(Value::as_array)
                .map(<[Value]>::len),
            Some(3)
        );
    }

    #[test]
    fn accepts_valid_documents() {
        let cases: [(&str, Value); 24] = [
            ("[]", Value::Array(vec![])),
            ("{}", Value::Object(vec![])),
            (" \t\r\n null \n", Value::Null),
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("0", Value::Integer(0)),
            ("18446744073709551615", Value::Integer(u64::MAX)),
            (
                "18446744073709551616",
                Value::Number(18_446_744_073_709_551_616.0),
            ),
            ("-0", Value::Number(-0.0)),
            ("-12", Value::Number(-12.0)),
            ("1.5e3", Value::Number(1500.0)),
            ("1E+2", Value::Number(100.0)),
            ("1e-2", Value::Number(0.01)),
            ("0.0e0", Value::Number(0.0)),
            ("123.456E-789", Value::Number(0.0)),
            (r#""\u0041\u00e9\u65e5""#, Value::String("Aé日".into())),
            (r#""\ud83e\udd80""#, Value::String("🦀".into())),
            (r#""\uD834\uDD1E""#, Value::String("𝄞".into())),
            (
                r#""\"\\\/\b\f\n\r\t""#,
                Value::String("\"\\/\u{8}\u{c}\n\r\t".into()),
            ),
            ("\"\u{7f}é\"", Value::String("\u{7f}é".into())),
            (
                r#"[1,"a",null,[]]"#,
                Value::Array(vec![
                    Value::Integer(1),
                    Value::String("a".into()),
                    Value::Null,
                    Value::Array(vec![]),
                ]),
            ),
            (
                r#"{ "a" : 1 , "b" : [ ] }"#,
                Value::Object(vec![
                    ("a".into(), Value::Integer(1)),
                    ("b".into(), Value::Array(vec![])),
                ]),
            ),
            (
                r#"{"a":1,"a":2}"#,
                Value::Object(vec![
                    ("a".into(), Value::Integer(1)),
                    ("a".into(), Value::Integer(2)),
                ]),
            ),
            (r#"{"":{"":""}}"#, {
                let inner = Value::Object(vec![("".into(), Value::String("".into()))]);
                Value::Object(vec![("".into(), inner)])
            }),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text), Ok(expected), "{text}");
        }
        let duplicate = decode(r#"{"a":1,"a":2}"#).unwrap();
        assert_eq!(duplicate.get("a").and_then(Value::as_f64), Some(1.0));
    }

    #[test]
    fn rejects_invalid_documents() {
        let too_deep = "[".repeat(200);
        let cases: Vec<(&str, DecodeError)> = vec![
            ("", DecodeError::UnexpectedEnd { offset: 0 }),
            ("  ", DecodeError::UnexpectedEnd { offset: 2 }),
            ("[1,]", DecodeError::ExpectedValue { offset: 3 }),
            (
                "[1 2]",
                DecodeError::Expected {
                    offset: 3,
                    expected: "',' or ']'",
                },
            ),
            ("[", DecodeError::UnexpectedEnd { offset: 1 }),
            ("[1", DecodeError::UnexpectedEnd { offset: 2 }),
            (
                r#"{"a" 1}"#,
                DecodeError::Expected {
                    offset: 5,
                    expected: "':'",
                },
            ),
            (
                r#"{"a":1,}"#,
                DecodeError::Expected {
                    offset: 7,
                    expected: "a member name",
                },
            ),
            (
                "{a:1}",
                DecodeError::Expected {
                    offset: 1,
                    expected: "a member name",
                },
            ),
            (
                r#"{"a":1 "b":2}"#,
                DecodeError::Expected {
                    offset: 7,
                    expected: "',' or '}'",
                },
            ),
            // Each offset is the byte that broke the number; a cut-off number is an early end.
            ("01", DecodeError::InvalidNumber { offset: 1 }),
            ("-01", DecodeError::InvalidNumber { offset: 2 }),
            ("-a", DecodeError::InvalidNumber { offset: 1 }),
            ("1.", DecodeError::UnexpectedEnd { offset: 2 }),
            (".1", DecodeError::ExpectedValue { offset: 0 }),
            ("+1", DecodeError::ExpectedValue { offset: 0 }),
            ("-", DecodeError::UnexpectedEnd { offset: 1 }),
            ("1e", DecodeError::UnexpectedEnd { offset: 2 }),
            ("1e+", DecodeError::UnexpectedEnd { offset: 3 }),
            ("1e+x", DecodeError::InvalidNumber { offset: 3 }),
            ("1E-]", DecodeError::InvalidNumber { offset: 3 }),
            ("[1.e5]", DecodeError::InvalidNumber { offset: 3 }),
            ("[-]", DecodeError::InvalidNumber { offset: 2 }),
            ("0x10", DecodeError::TrailingCharacters { offset: 1 }),
            ("1e400", DecodeError::NumberOutOfRange { offset: 0 }),
            ("-1e400", DecodeError::NumberOutOfRange { offset: 0 }),
            ("NaN", DecodeError::ExpectedValue { offset: 0 }),
            ("Infinity", DecodeError::ExpectedValue { offset: 0 }),
            (
                "\"\u{1}\"",
                DecodeError::ControlCharacterInString { offset: 1 },
            ),
            (
                "\"a\tb\"",
                DecodeError::ControlCharacterInString { offset: 2 },
            ),
            (
                "\"line\nbreak\"",
                DecodeError::ControlCharacterInString { offset: 5 },
            ),
            // A high half points where its low half should be; a low half alone, at itself.
            (r#""\ud800""#, DecodeError::LoneSurrogate { offset: 7 }),
            (
                r#""\udc00\ud800""#,
                DecodeError::LoneSurrogate { offset: 1 },
            ),
            (
                r#""ab\ud800\u0041""#,
                DecodeError::LoneSurrogate { offset: 9 },
            ),
            (
                r#""\ud800\ud800""#,
                DecodeError::LoneSurrogate { offset: 7 },
            ),
            (r#""\ud800x""#, DecodeError::LoneSurrogate { offset: 7 }),
            (r#""\ud800\n""#, DecodeError::LoneSurrogate { offset: 7 }),
            (r#""\ud800"#, DecodeError::UnexpectedEnd { offset: 7 }),
            (r#""\ud800\"#, DecodeError::UnexpectedEnd { offset: 8 }),
            (r#""\x41""#, DecodeError::InvalidEscape { offset: 2 }),
            (r#""abc\u12G4""#, DecodeError::InvalidEscape { offset: 8 }),
            (r#""\'""#, DecodeError::InvalidEscape { offset: 2 }),
            (r#""\u12"#, DecodeError::UnexpectedEnd { offset: 5 }),
            (r#""abc"#, DecodeError::UnexpectedEnd { offset: 4 }),
            (&too_deep, DecodeError::TooDeep { offset: MAX_DEPTH }),
            ("nul", DecodeError::UnexpectedEnd { offset: 3 }),
            ("[nulx]", DecodeError::InvalidLiteral { offset: 4 }),
            ("fals", DecodeError::UnexpectedEnd { offset: 4 }),
            ("tRue", DecodeError::InvalidLiteral { offset: 1 }),
            ("True", DecodeError::ExpectedValue { offset: 0 }),
            ("nulll", DecodeError::TrailingCharacters { offset: 4 }),
            ("1 2", DecodeError::TrailingCharacters { offset: 2 }),
            ("{}}", DecodeError::TrailingCharacters { offset: 2 }),
            ("\u{a0}1", DecodeError::ExpectedValue { offset: 0 }),
            ("1\u{c}", DecodeError::TrailingCharacters { offset: 1 }),
            ("\u{feff}1", DecodeError::ExpectedValue { offset: 0 }),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn numbers_with_long_exponents_are_exact() {
        // std's parser stops counting an exponent near 655,360: both of these are exactly 1,
        // and came out as 0 and as out of range.
        let long_fraction = format!("0.{}1e700000", "0".repeat(699_999));
        assert_eq!(decode(&long_fraction), Ok(Value::Number(1.0)));
        let long_integer = format!("1{}e-700000", "0".repeat(700_000));
        assert_eq!(decode(&long_integer), Ok(Value::Number(1.0)));
        let negative = format!("-0.{}25e700000", "0".repeat(699_999));
        assert_eq!(decode(&negative), Ok(Value::Number(-2.5)));
        // Where std must still round on that path: at f64::MAX, at half the smallest subnormal,
        // and to a negative zero.
        let long = |digits: &str, zeros: usize, exponent: &str| {
            decode(&format!("{digits}{}e{exponent}", "0".repeat(zeros)))
        };
        assert_eq!(
            long("17976931348623158", 100_292, "-100000"),
            Ok(Value::Number(f64::MAX))
        );
        assert_eq!(
            long("17976931348623159", 100_292, "-100000"),
            Err(DecodeError::NumberOutOfRange { offset: 0 })
        );
        assert_eq!(
            long("24703282292062328", 100_000, "-100340"),
            Ok(Value::Number(5e-324))
        );
        assert_eq!(
            long("24703282292062327", 100_000, "-100340"),
            Ok(Value::Number(0.0))
        );
        let underflow = format!("-0.{}24703282292062327e999677", "0".repeat(1_000_000));
        let Ok(Value::Number(zero)) = decode(&underflow) else {
            panic!("{:?}", decode(&underflow));
        };
        assert_eq!(zero.to_bits(), (-0.0f64).to_bits());
        let cases = [
            ("1e99999999999999999999999999", None::<f64>),
            ("-1e100000", None),
            ("1e-99999999999999999999999999", Some(0.0)),
            ("-1e-100000", Some(-0.0)),
            ("0e99999999999999999999", Some(0.0)),
            ("-0.000e100000", Some(-0.0)),
            ("1e000000000000000000000000000308", Some(1e308)),
            ("0.00017976931348623157e100000", None),
        ];
        for (text, expected) in cases {
            let decoded = decode(text);
            match expected {
                Some(value) => {
                    let Ok(Value::Number(number)) = decoded else {
                        panic!("{text}: {decoded:?}");
                    };
                    assert_eq!(number.to_bits(), value.to_bits(), "{text}");
                }
                None => assert_eq!(
                    decoded,
                    Err(DecodeError::NumberOutOfRange { offset: 0 }),
                    "{text}"
                ),
            }
        }
        // Where std is right, the way around it gives the same bits.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // One in four has no integer part, and its fraction's leading zeros move the point.
            let integer = match state % 4 {
                0 => "0".to_string(),
                _ => ((state >> 2) % 1_000_000).to_string(),
            };
            let fraction = format!("{:07}", (state >> 20) % 10_000_000);
            let exponent = (state >> 44) as i64 % 700 - 350;
            let text = format!("{integer}.{fraction}e{exponent}");
            let by_std: f64 = text.parse().unwrap();
            let around = parse_with_long_exponent(false, &integer, &fraction, exponent);
            assert_eq!(around.to_bits(), by_std.to_bits(), "{text}");
        }
        assert_eq!(parse_with_long_exponent(true, "0", "0001", 4), -1.0);
    }

    #[test]
    fn nesting_is_capped_at_max_depth() {
        let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(decode(&at_limit).is_ok());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(decode(&objects).is_ok());
        let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            decode(&over),
            Err(DecodeError::TooDeep { offset: MAX_DEPTH })
        );
        // A huge hostile input fails fast instead of overflowing the stack.
        let hostile = "[{\"a\":".repeat(100_000);
        assert!(matches!(decode(&hostile), Err(DecodeError::TooDeep { .. })));
    }

    #[test]
    fn the_number_of_values_is_capped_when_asked() {
        // The array, its items, the object and its member's value: one each.
        let text = r#"[1,"a",{"k":[null]}]"#;
        assert!(decode_at_most(text, 6).is_ok());
        let error = decode_at_most(text, 5).unwrap_err();
        assert_eq!(
            error,
            DecodeError::TooManyValues {
                offset: 13,
                limit: 5
            }
        );
        assert_eq!(
            error.to_string(),
            "invalid json at byte 13: more than the 5 values expected"
        );
        assert_eq!(
            decode_at_most("7", 0),
            Err(DecodeError::TooManyValues {
                offset: 0,
                limit: 0
            })
        );
        // The amplifying shape is stopped at the bound, not after building the whole tree.
        let zeros = format!("[{}0]", "0,".repeat(1_000_000));
        assert_eq!(
            decode_at_most(&zeros, 1_001).unwrap_err().offset(),
            2 * 1_000 + 1
        );
        assert!(decode(&zeros).is_ok());
    }

    #[test]
    fn errors_display_one_lowercase_line() {
        let error = decode(r#"{"key":1,"other" 2}"#).unwrap_err();
        assert_eq!(error.to_string(), "invalid json at byte 17: expected ':'");
        assert_eq!(error.offset(), 17);
        assert_eq!(
            decode("[").unwrap_err().to_string(),
            "invalid json at byte 1: unexpected end of input"
        );
        assert_eq!(
            decode(&"[".repeat(MAX_DEPTH + 1)).unwrap_err().to_string(),
            "invalid json at byte 128: nesting deeper than 128"
        );
    }

    #[test]
    fn accessors() {
        let cases = [
            ("1", Some(1)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("9007199254740991", Some((1u64 << 53) - 1)),
            // Digits alone are kept exact, up to u64::MAX.
            ("9007199254740992", Some(1 << 53)),
            ("9007199254740993", Some((1 << 53) + 1)),
            ("18446744073709551615", Some(u64::MAX)),
            // Past u64::MAX, or with a fraction or exponent, it is an f64: exact below 2^53.
            ("18446744073709551616", None),
            ("2.0", Some(2)),
            ("1e3", Some(1000)),
            ("9007199254740991.0", Some((1 << 53) - 1)),
            // Both round to 2^53, so neither can be told apart from the other.
            ("9007199254740992.0", None),
            ("9007199254740993e0", None),
            ("-1", None),
            ("1.5", None),
            ("\"1\"", None),
        ];
        for (text, expected) in cases {
            assert_eq!(decode(text).unwrap().as_u64(), expected, "{text}");
        }
        let array = decode("[1]").unwrap();
        assert_eq!(array.get("a"), None);
        assert_eq!(array.as_str(), None);
        assert_eq!(array.as_f64(), None);
        assert_eq!(decode("\"s\"").unwrap().as_array(), None);
    }

    #[test]
    fn every_prefix_of_a_document_is_rejected_without_panicking() {
        let document = r#"{"a":[1,-2.5e-3,true,false,null,"\ud83e\udd80\n"],"b":{}}"#;
        assert!(decode(document).is_ok());
        for end in 0..document.len() {
            assert!(decode(&document[..end]).is_err(), "prefix {end}");
        }
    }
}
