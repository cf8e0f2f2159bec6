//! HTTP/1.1 message syntax (RFC 9112) by hand: a strict, zero-copy request parser for the server,
//! a response parser for the client, a chunked-body decoder for both, and response writers.
//!
//! Invariants: parsers never allocate per header and never panic; they return
//! `Ok(Parsed::Partial)` while the head is incomplete and each line of it so far is well-formed,
//! and `Err` for a real violation, whose `status()` is what the server answers before closing.
//! Rules that weigh fields against each other (one Host, the framing fields) are checked once the
//! head is complete, so a head that breaks one is refused at its blank line, not before. Writers
//! append to a caller's buffer and cannot fail. Nothing here touches a socket.
//!
//! Strictness: lines end in CRLF only; a bare CR or LF, obs-fold, whitespace before a field's
//! colon, control bytes in values, conflicting framing (`Content-Length` with
//! `Transfer-Encoding`, differing lengths, `chunked` not last or repeated) are all refused, because
//! a peer that reads such a message differently from us is how request smuggling works.

/// Longest request line (method, target, version) accepted; longer gets 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest header section (all field lines after the request line) accepted; larger gets 431.
pub const MAX_HEADER_SECTION: usize = 16 * 1024;
/// Most header fields accepted; more gets 431.
pub const MAX_HEADER_FIELDS: usize = 100;
/// Largest request body accepted (it is read and discarded); larger gets 413.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Most empty lines (CRLF) skipped before a request line (RFC 9112 §2.2 asks for at least one);
/// more is not a client being robust but garbage, and gets 400.
pub const MAX_LEADING_EMPTY_LINES: usize = 4;
/// Longest chunk-size line (size and extensions, without CRLF) in a chunked body; longer gets
/// 400, so that endless chunk extensions cannot keep a connection busy for free.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Longest status line (version, code, reason) the client accepts.
pub const MAX_STATUS_LINE: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------------
// Byte classes (256-entry tables built at compile time from the RFC grammar).

const fn add_range(mut table: [bool; 256], first: u8, last: u8) -> [bool; 256] {
    let mut byte = first as usize;
    while byte <= last as usize {
        table[byte] = true;
        byte += 1;
    }
    table
}

const fn add_bytes(mut table: [bool; 256], bytes: &[u8]) -> [bool; 256] {
    let mut index = 0;
    while index < bytes.len() {
        table[bytes[index] as usize] = true;
        index += 1;
    }
    table
}

const fn add_alphanumeric(table: [bool; 256]) -> [bool; 256] {
    add_range(
        add_range(add_range(table, b'0', b'9'), b'A', b'Z'),
        b'a',
        b'z',
    )
}

/// RFC 9110 §5.6.2:
/// `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
///          / "~" / DIGIT / ALPHA`
static TOKEN_CHARS: [bool; 256] = add_bytes(add_alphanumeric([false; 256]), b"!#$%&'*+-.^_`|~");

/// RFC 9110 §5.5: `field-value = *field-content`,
/// `field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]`,
/// `field-vchar = VCHAR / obs-text`, `obs-text = %x80-FF`. Surrounding whitespace is trimmed
/// separately; this is every byte that may appear in a value at all.
static FIELD_VALUE_CHARS: [bool; 256] = add_bytes(
    add_range(add_range([false; 256], 0x21, 0x7E), 0x80, 0xFF),
    b" \t",
);

/// RFC 3986 §3.3 (used by RFC 9112 §3.2.1 origin-form and the path of absolute-form):
/// `pchar = unreserved / pct-encoded / sub-delims / ":" / "@"`,
/// `unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"`,
/// `sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="`,
/// plus "/" between segments and "?" in the query. "%" is allowed here and its two hex digits
/// are checked separately. Everything else (CTLs, SP, `"`, `#`, `<`, `>`, `\`, `^`, `` ` ``,
/// `{`, `|`, `}`, `[`, `]`, non-ASCII) is not.
static PATH_CHARS: [bool; 256] = add_bytes(add_alphanumeric([false; 256]), b"-._~!$&'()*+,;=:@/?%");

/// Every byte that may appear in any request-target form: `PATH_CHARS` plus "[" and "]" for an
/// IP-literal host in absolute-form and authority-form (RFC 3986 §3.2.2). Used while scanning;
/// each form is then checked with its own grammar.
static TARGET_CHARS: [bool; 256] = add_bytes(PATH_CHARS, b"[]");

/// RFC 3986 §3.2.2: `reg-name = *( unreserved / pct-encoded / sub-delims )`, without ","
/// because a comma in `Host` is how two hosts get smuggled into one field.
static REG_NAME_CHARS: [bool; 256] = add_bytes(add_alphanumeric([false; 256]), b"-._~!$&'()*+;=%");

/// RFC 3986 §3.2.2: what may follow the "." of `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved /
/// sub-delims / ":" )`.
static IP_FUTURE_CHARS: [bool; 256] =
    add_bytes(add_alphanumeric([false; 256]), b"-._~!$&'()*+,;=:");

/// RFC 9110 §5.6.4: `qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text`.
static QUOTED_TEXT_CHARS: [bool; 256] = add_range(
    add_range(
        add_range(add_bytes([false; 256], b"\t !"), 0x23, 0x5B),
        0x5D,
        0x7E,
    ),
    0x80,
    0xFF,
);

/// RFC 9110 §5.6.4: `quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )`.
static QUOTED_PAIR_CHARS: [bool; 256] = add_bytes(
    add_range(add_range([false; 256], 0x21, 0x7E), 0x80, 0xFF),
    b"\t ",
);

fn is_token_char(byte: u8) -> bool {
    TOKEN_CHARS[byte as usize]
}

fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&byte| is_token_char(byte))
}

fn is_whitespace(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Strips OWS (`*( SP / HTAB )`, RFC 9110 §5.6.3) from both ends.
pub fn trim_whitespace(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !is_whitespace(*first) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !is_whitespace(*last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Every "%" is followed by two hex digits (RFC 3986 §2.1 `pct-encoded`).
fn has_valid_percent_encoding(bytes: &[u8]) -> bool {
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            match bytes.get(index + 1..index + 3) {
                Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                    index += 3
                }
                _ => return false,
            }
        } else {
            index += 1;
        }
    }
    true
}

/// `authority = host [ ":" port ]` (RFC 3986 §3.2, without userinfo, which RFC 9110 §4.2.4
/// tells recipients to treat as an error).
fn is_valid_authority(bytes: &[u8], host_required: bool, port_required: bool) -> bool {
    let (host, port) = if let Some(after_bracket) = bytes.strip_prefix(b"[") {
        let Some(close) = after_bracket.iter().position(|&byte| byte == b']') else {
            return false;
        };
        if !is_valid_ip_literal(&after_bracket[..close]) {
            return false;
        }
        let after = &after_bracket[close + 1..];
        match after {
            [] => (&bytes[..close + 2], None),
            [b':', port @ ..] => (&bytes[..close + 2], Some(port)),
            _ => return false,
        }
    } else {
        match bytes.iter().position(|&byte| byte == b':') {
            Some(colon) => (&bytes[..colon], Some(&bytes[colon + 1..])),
            None => (bytes, None),
        }
    };
    if host.first() != Some(&b'[')
        && (!host.iter().all(|&byte| REG_NAME_CHARS[byte as usize])
            || !has_valid_percent_encoding(host))
    {
        return false;
    }
    if host.is_empty() && (host_required || port.is_some()) {
        return false;
    }
    match port {
        None | Some([]) => !port_required,
        // `port = *DIGIT`: leading zeros are allowed, as in Content-Length; above 65535 names
        // no port at all.
        Some(digits) => parse_decimal(digits).is_some_and(|port| port <= 65_535),
    }
}

/// What lies between the brackets of `IP-literal = "[" ( IPv6address / IPvFuture ) "]"` (RFC
/// 3986 §3.2.2). The characters alone are not enough: `[zz]` or `[:::::]` name no address, and
/// RFC 9112 §3.2 has a request with an invalid Host refused.
fn is_valid_ip_literal(inside: &[u8]) -> bool {
    // ABNF literals are case-insensitive, so "V" introduces an IPvFuture too.
    if let [b'v' | b'V', future @ ..] = inside {
        let Some(dot) = future.iter().position(|&byte| byte == b'.') else {
            return false;
        };
        let (version, address) = (&future[..dot], &future[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !address.is_empty()
            && address.iter().all(|&byte| IP_FUTURE_CHARS[byte as usize]);
    }
    // std's parser takes exactly RFC 4291 §2.2's text forms, which RFC 3986's `IPv6address`
    // spells out: no zone identifier, no leading zeros in an embedded IPv4 address.
    std::str::from_utf8(inside).is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok())
}

/// `1*DIGIT` as a `u64`; `None` if empty, not all digits, or too big.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    Some(value)
}

// ---------------------------------------------------------------------------------------------
// Field sections, shared by requests, responses and (byte by byte) chunked trailers.

/// Why a scan stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Partial,
    Invalid(RequestError),
}

impl From<RequestError> for Stop {
    fn from(error: RequestError) -> Stop {
        Stop::Invalid(error)
    }
}

enum FieldLine {
    /// A field line; the next line starts at this offset.
    Field(usize),
    /// The blank line ending the section; the message head ends at this offset.
    End(usize),
}

/// Scans one line of a field section starting at `start`:
/// `field-line = field-name ":" OWS field-value OWS` then CRLF (RFC 9112 §5), or the empty line.
fn scan_field_line(buf: &[u8], start: usize, first: bool) -> Result<FieldLine, Stop> {
    let Some(&lead) = buf.get(start) else {
        return Err(Stop::Partial);
    };
    match lead {
        b'\r' => {
            return match buf.get(start + 1) {
                None => Err(Stop::Partial),
                Some(b'\n') => Ok(FieldLine::End(start + 2)),
                Some(_) => Err(RequestError::BareCarriageReturn.into()),
            }
        }
        b'\n' => return Err(RequestError::BareLineFeed.into()),
        // RFC 9112 §2.2 and §5.2: whitespace before the first field, or a continuation line.
        b' ' | b'\t' if first => return Err(RequestError::WhitespaceAfterStartLine.into()),
        b' ' | b'\t' => return Err(RequestError::ObsoleteLineFolding.into()),
        _ => {}
    }
    let mut index = start;
    while index < buf.len() && is_token_char(buf[index]) {
        index += 1;
    }
    let Some(&after_name) = buf.get(index) else {
        return Err(Stop::Partial);
    };
    if index == start {
        return Err(RequestError::BadHeaderName.into());
    }
    match after_name {
        b':' => {}
        b' ' | b'\t' => return Err(RequestError::WhitespaceBeforeColon.into()),
        b'\n' => return Err(RequestError::BareLineFeed.into()),
        _ => return Err(RequestError::BadHeaderName.into()),
    }
    index += 1;
    loop {
        let Some(&byte) = buf.get(index) else {
            return Err(Stop::Partial);
        };
        if FIELD_VALUE_CHARS[byte as usize] {
            index += 1;
            continue;
        }
        return match byte {
            b'\r' => match buf.get(index + 1) {
                None => Err(Stop::Partial),
                Some(b'\n') => Ok(FieldLine::Field(index + 2)),
                Some(_) => Err(RequestError::BareCarriageReturn.into()),
            },
            b'\n' => Err(RequestError::BareLineFeed.into()),
            _ => Err(RequestError::BadHeaderValue.into()),
        };
    }
}

/// Scans the field section starting at `start` up to and including its blank line, applying
/// `MAX_HEADER_SECTION` and `MAX_HEADER_FIELDS` also to a section still arriving.
/// Returns (end of the last field line, end of the blank line).
fn scan_field_section(buf: &[u8], start: usize) -> Result<(usize, usize), Stop> {
    // Nothing past the limit (plus room for the blank line) can be valid, so never look further.
    let window = &buf[..buf.len().min(start.saturating_add(MAX_HEADER_SECTION + 2))];
    let mut line_start = start;
    let mut fields = 0;
    loop {
        let starts_field = window.get(line_start).is_some_and(|&byte| byte != b'\r');
        if starts_field && fields == MAX_HEADER_FIELDS {
            return Err(RequestError::TooManyHeaderFields.into());
        }
        match scan_field_line(window, line_start, line_start == start) {
            Ok(FieldLine::End(end)) => return Ok((line_start, end)),
            Ok(FieldLine::Field(next)) => {
                if next - start > MAX_HEADER_SECTION {
                    return Err(RequestError::HeaderSectionTooLarge.into());
                }
                fields += 1;
                line_start = next;
            }
            Err(Stop::Partial) => {
                if starts_field {
                    // The line in progress needs at least its CRLF (or the LF after a final CR).
                    let pending_end = if window.last() == Some(&b'\r') { 1 } else { 2 };
                    if window.len() - start + pending_end > MAX_HEADER_SECTION {
                        return Err(RequestError::HeaderSectionTooLarge.into());
                    }
                }
                return Err(Stop::Partial);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The field lines of a header section that `scan_field_section` accepted, indexed once: the
/// parser and the routes look fields up about ten times per request, and each lookup then
/// compares names instead of scanning the section for line ends again.
#[derive(Clone, Copy)]
pub struct FieldTable<'b> {
    section: &'b [u8],
    spans: [FieldSpan; MAX_HEADER_FIELDS],
    count: usize,
}

/// Where one field line's name and trimmed value are in the section.
#[derive(Debug, Clone, Copy, Default)]
struct FieldSpan {
    name: (u16, u16),
    value: (u16, u16),
}

// Offsets into a section fit in u16.
const _: () = assert!(MAX_HEADER_SECTION + 2 <= u16::MAX as usize);

impl<'b> FieldTable<'b> {
    /// Indexes a section that `scan_field_section` accepted (at most [`MAX_HEADER_FIELDS`]
    /// lines, each ending in CRLF).
    fn new(section: &'b [u8]) -> FieldTable<'b> {
        let mut table = FieldTable {
            section,
            spans: [FieldSpan::default(); MAX_HEADER_FIELDS],
            count: 0,
        };
        let mut position = 0;
        while position < section.len() && table.count < MAX_HEADER_FIELDS {
            let rest = &section[position..];
            // After validation a CR only ever appears as part of a CRLF.
            let line_end = rest
                .iter()
                .position(|&byte| byte == b'\r')
                .unwrap_or(rest.len());
            let line = &rest[..line_end];
            let (name_end, value) = match line.iter().position(|&byte| byte == b':') {
                Some(colon) => (colon, trimmed_range(line, colon + 1)),
                None => (line_end, (line_end, line_end)),
            };
            let at = |offset: usize| (position + offset) as u16;
            table.spans[table.count] = FieldSpan {
                name: (at(0), at(name_end)),
                value: (at(value.0), at(value.1)),
            };
            table.count += 1;
            position += line_end + 2;
        }
        table
    }

    /// The (name, trimmed value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + '_ {
        let section = self.section;
        let slice = move |(start, end): (u16, u16)| {
            section
                .get(usize::from(start)..usize::from(end))
                .unwrap_or(&[])
        };
        self.spans[..self.count]
            .iter()
            .map(move |span| (slice(span.name), slice(span.value)))
    }

    /// How many field lines there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.count
    }
}

impl std::fmt::Debug for FieldTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(name, value)| {
                (
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value),
                )
            }))
            .finish()
    }
}

/// The range of `line[from..]` without OWS at either end, as offsets into `line`.
fn trimmed_range(line: &[u8], from: usize) -> (usize, usize) {
    let mut start = from.min(line.len());
    let mut end = line.len();
    while start < end && is_whitespace(line[start]) {
        start += 1;
    }
    while end > start && is_whitespace(line[end - 1]) {
        end -= 1;
    }
    (start, end)
}

fn find_field<'b>(section: &FieldTable<'b>, name: &str) -> Option<&'b [u8]> {
    field_values(section, name).next()
}

/// The values of every field named `name`, in order. Every request looks up several names
/// that are usually absent, so a field whose name has another length is passed over on its
/// span alone, before any slicing or byte comparison.
fn field_values<'b, 'n>(
    section: &'n FieldTable<'b>,
    name: &'n str,
) -> impl Iterator<Item = &'b [u8]> + 'n
where
    'b: 'n,
{
    let text = section.section;
    let slice = move |(start, end): (u16, u16)| {
        text.get(usize::from(start)..usize::from(end))
            .unwrap_or(&[])
    };
    section.spans[..section.count]
        .iter()
        .filter(move |span| {
            usize::from(span.name.1.saturating_sub(span.name.0)) == name.len()
                && slice(span.name).eq_ignore_ascii_case(name.as_bytes())
        })
        .map(move |span| slice(span.value))
}

/// The non-empty, trimmed elements of a comma-separated list (RFC 9110 §5.6.1: recipients
/// ignore empty elements), across all of its field lines.
fn list_elements<'b, 'n>(
    section: &'n FieldTable<'b>,
    name: &'n str,
) -> impl Iterator<Item = &'b [u8]> + 'n
where
    'b: 'n,
{
    field_values(section, name)
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(trim_whitespace)
        .filter(|element| !element.is_empty())
}

/// The body length from every `Content-Length` field: `1*DIGIT`, where repeated fields or a
/// comma list must all agree (RFC 9110 §8.6). `Ok(None)` when there is none.
fn content_length(section: &FieldTable<'_>) -> Result<Option<u64>, RequestError> {
    let mut length = None;
    for value in field_values(section, "content-length") {
        for element in value.split(|&byte| byte == b',') {
            let parsed =
                parse_decimal(trim_whitespace(element)).ok_or(RequestError::BadContentLength)?;
            match length {
                Some(previous) if previous != parsed => {
                    return Err(RequestError::ConflictingContentLength)
                }
                _ => length = Some(parsed),
            }
        }
    }
    Ok(length)
}

/// What the `Transfer-Encoding` list (all its fields combined) says about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCodings {
    Absent,
    /// Exactly `chunked`.
    ChunkedOnly,
    /// Other codings, then `chunked` last.
    ChunkedLast,
    /// The final coding is not `chunked`.
    NotChunkedLast,
}

/// Parses `Transfer-Encoding = #transfer-coding` where
/// `transfer-coding = token *( OWS ";" OWS transfer-parameter )` and
/// `transfer-parameter = token BWS "=" BWS ( token / quoted-string )` (RFC 9110 §10.1.4).
fn transfer_codings(section: &FieldTable<'_>) -> Result<TransferCodings, RequestError> {
    let mut present = false;
    let mut codings = 0usize;
    let mut chunked_count = 0usize;
    let mut last_is_chunked = false;
    for value in field_values(section, "transfer-encoding") {
        present = true;
        // `#transfer-coding` (RFC 9112 §6.1): empty elements, and so an empty field line, are
        // ignored (RFC 9110 §5.6.1.2), as they would be once the lines were combined into one
        // list (§5.3). A field with no coding at all is refused below.
        for element in split_list(value)? {
            let element = trim_whitespace(element);
            if element.is_empty() {
                continue;
            }
            let (name, has_parameters) = split_coding(element)?;
            let is_chunked = name.eq_ignore_ascii_case(b"chunked");
            if is_chunked {
                // `chunked` takes no parameters (RFC 9112 §7).
                if has_parameters {
                    return Err(RequestError::BadTransferEncoding);
                }
                chunked_count += 1;
            }
            codings += 1;
            last_is_chunked = is_chunked;
        }
    }
    if !present {
        return Ok(TransferCodings::Absent);
    }
    if codings == 0 {
        return Err(RequestError::BadTransferEncoding);
    }
    if chunked_count > 1 {
        return Err(RequestError::RepeatedChunked);
    }
    Ok(match (last_is_chunked, codings) {
        (false, _) => TransferCodings::NotChunkedLast,
        (true, 1) => TransferCodings::ChunkedOnly,
        (true, _) => TransferCodings::ChunkedLast,
    })
}

/// Splits a list at commas outside quoted strings, so a quoted parameter value may hold a comma.
fn split_list(value: &[u8]) -> Result<impl Iterator<Item = &[u8]>, RequestError> {
    let mut in_quotes = false;
    let mut escaped = false;
    for &byte in value {
        if escaped {
            escaped = false;
        } else if in_quotes && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            in_quotes = !in_quotes;
        }
    }
    if in_quotes {
        return Err(RequestError::BadTransferEncoding);
    }
    let mut state_quotes = false;
    let mut state_escaped = false;
    Ok(value.split(move |&byte| {
        if state_escaped {
            state_escaped = false;
            return false;
        }
        if state_quotes && byte == b'\\' {
            state_escaped = true;
            return false;
        }
        if byte == b'"' {
            state_quotes = !state_quotes;
            return false;
        }
        !state_quotes && byte == b','
    }))
}

/// Splits one transfer-coding into its name and whether it has parameters, checking the
/// parameter grammar.
fn split_coding(element: &[u8]) -> Result<(&[u8], bool), RequestError> {
    let name_end = element
        .iter()
        .position(|&byte| !is_token_char(byte))
        .unwrap_or(element.len());
    let name = &element[..name_end];
    if name.is_empty() {
        return Err(RequestError::BadTransferEncoding);
    }
    let mut rest = &element[name_end..];
    let has_parameters = !rest.is_empty();
    while !rest.is_empty() {
        rest = trim_whitespace(rest);
        let Some(after_semicolon) = rest.strip_prefix(b";") else {
            return Err(RequestError::BadTransferEncoding);
        };
        let after_semicolon = trim_whitespace(after_semicolon);
        let parameter_end = after_semicolon
            .iter()
            .position(|&byte| !is_token_char(byte))
            .unwrap_or(after_semicolon.len());
        if parameter_end == 0 {
            return Err(RequestError::BadTransferEncoding);
        }
        let Some(after_equals) =
            trim_whitespace(&after_semicolon[parameter_end..]).strip_prefix(b"=")
        else {
            return Err(RequestError::BadTransferEncoding);
        };
        let value = trim_whitespace(after_equals);
        let value_length =
            parameter_value_length(value).ok_or(RequestError::BadTransferEncoding)?;
        rest = &value[value_length..];
    }
    Ok((name, has_parameters))
}

/// The length of the `token / quoted-string` at the start of `bytes`.
fn parameter_value_length(bytes: &[u8]) -> Option<usize> {
    if let Some(quoted) = bytes.strip_prefix(b"\"") {
        let mut index = 0;
        while let Some(&byte) = quoted.get(index) {
            match byte {
                b'"' => return Some(index + 2),
                b'\\'
                    if quoted
                        .get(index + 1)
                        .is_some_and(|&next| QUOTED_PAIR_CHARS[next as usize]) =>
                {
                    index += 2
                }
                _ if QUOTED_TEXT_CHARS[byte as usize] => index += 1,
                _ => return None,
            }
        }
        None
    } else {
        let length = bytes
            .iter()
            .position(|&byte| !is_token_char(byte))
            .unwrap_or(bytes.len());
        (length > 0).then_some(length)
    }
}

/// `Connection = #connection-option` (RFC 9110 §7.6.1): whether `close` and `keep-alive` are
/// among the options.
fn connection_options(section: &FieldTable<'_>) -> Result<(bool, bool), RequestError> {
    let mut close = false;
    let mut keep_alive = false;
    for option in list_elements(section, "connection") {
        if !is_token(option) {
            return Err(RequestError::BadConnection);
        }
        close |= option.eq_ignore_ascii_case(b"close");
        keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
    }
    Ok((close, keep_alive))
}

fn version_keeps_alive(minor_version: u8, close: bool, keep_alive: bool) -> bool {
    // RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
    !close && (minor_version >= 1 || keep_alive)
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// A parse that either finished or needs more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    Partial,
}

/// Request methods the server knows by name (RFC 9110 §9); anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    fn from_token(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head borrowing from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'b> {
    pub method: Method,
    /// The method token as sent (for logs and `Other`).
    pub method_text: &'b str,
    /// The request target as sent.
    pub target: &'b str,
    /// The path: the target up to `?` (absolute-form reduced to its path; `*` stays `*`;
    /// authority-form, only with CONNECT, stays the authority).
    pub path: &'b str,
    /// The query after `?`, without the `?`.
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (a higher 1.x minor is treated as 1).
    pub minor_version: u8,
    /// Bytes from the start of the buffer to the end of the blank line that ends the head
    /// (including any empty lines skipped before the request line).
    pub head_length: usize,
    pub body: BodyFraming,
    /// Whether the connection may stay open after the response (version default and `Connection`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (ignored on HTTP/1.0, RFC 9110 §10.1.1).
    pub expect_continue: bool,
    fields: FieldTable<'b>,
}

impl<'b> RequestHead<'b> {
    /// The value of the first field named `name` (case-insensitive), without surrounding
    /// whitespace.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        find_field(&self.fields, name)
    }

    /// The value of a field that holds a single value, like [`RequestHead::header`], or
    /// `Err(RepeatedField)` when it is sent more than once: such a field is not a list that
    /// could be combined (RFC 9110 §5.3), and taking either line would silently drop the other.
    pub fn single_header(&self, name: &str) -> Result<Option<&'b [u8]>, RepeatedField> {
        let mut values = field_values(&self.fields, name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(RepeatedField),
            None => Ok(first),
        }
    }
}

/// A single-valued field was sent more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatedField;

/// Why a request is refused. Each variant maps to one status and one short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Request line structure: leading whitespace, double SP, missing version, too many empty
    /// lines before it.
    BadRequestLine,
    BadMethod,
    BadTarget,
    BadVersion,
    /// A well-formed version other than HTTP/1.x (505).
    UnsupportedVersion,
    /// 414.
    RequestLineTooLong,
    /// A method longer than the request-line limit: longer than any implemented, so 501
    /// (RFC 9112 §3), not the 414 of a long target.
    MethodTooLong,
    BareLineFeed,
    BareCarriageReturn,
    WhitespaceAfterStartLine,
    BadHeaderName,
    WhitespaceBeforeColon,
    ObsoleteLineFolding,
    BadHeaderValue,
    /// 431.
    HeaderSectionTooLarge,
    /// 431.
    TooManyHeaderFields,
    MissingHost,
    MultipleHost,
    BadHost,
    BadContentLength,
    ConflictingContentLength,
    LengthWithTransferEncoding,
    BadTransferEncoding,
    TransferEncodingNotChunked,
    TransferEncodingInHttp10,
    RepeatedChunked,
    /// A coding before `chunked` (501: we implement none).
    UnsupportedTransferCoding,
    BadConnection,
    /// 413.
    BodyTooLarge,
    BadChunkSize,
    BadChunkExtension,
    ChunkLineTooLong,
    MissingChunkTerminator,
    /// 431.
    TrailerTooLarge,
    BadTrailer,
    /// 417.
    ExpectationFailed,
}

impl RequestError {
    /// The status the server answers with (400, 413, 414, 417, 431, 501, 505).
    pub fn status(self) -> u16 {
        match self {
            RequestError::UnsupportedVersion => 505,
            RequestError::RequestLineTooLong => 414,
            RequestError::HeaderSectionTooLarge
            | RequestError::TooManyHeaderFields
            | RequestError::TrailerTooLarge => 431,
            RequestError::UnsupportedTransferCoding | RequestError::MethodTooLong => 501,
            RequestError::BodyTooLarge => 413,
            RequestError::ExpectationFailed => 417,
            _ => 400,
        }
    }

    /// A short lowercase reason, sent as the response body.
    pub fn reason(self) -> &'static str {
        match self {
            RequestError::BadRequestLine => "malformed request line",
            RequestError::BadMethod => "invalid method",
            RequestError::BadTarget => "invalid request target",
            RequestError::BadVersion => "malformed http version",
            RequestError::UnsupportedVersion => {
                "http version not supported: use HTTP/1.1 or HTTP/1.0"
            }
            RequestError::RequestLineTooLong => "request line too long",
            RequestError::MethodTooLong => "method too long: not implemented",
            RequestError::BareLineFeed => "bare line feed",
            RequestError::BareCarriageReturn => "bare carriage return",
            RequestError::WhitespaceAfterStartLine => "whitespace after start line",
            RequestError::BadHeaderName => "invalid header name",
            RequestError::WhitespaceBeforeColon => "whitespace before header colon",
            RequestError::ObsoleteLineFolding => "obsolete line folding",
            RequestError::BadHeaderValue => "invalid header value",
            RequestError::HeaderSectionTooLarge => "header section too large",
            RequestError::TooManyHeaderFields => "too many header fields",
            RequestError::MissingHost => "missing host header",
            RequestError::MultipleHost => "multiple host headers",
            RequestError::BadHost => "invalid host header",
            RequestError::BadContentLength => "invalid content-length",
            RequestError::ConflictingContentLength => "conflicting content-length",
            RequestError::LengthWithTransferEncoding => "content-length with transfer-encoding",
            RequestError::BadTransferEncoding => "invalid transfer-encoding",
            RequestError::TransferEncodingNotChunked => "transfer-encoding not ending in chunked",
            RequestError::TransferEncodingInHttp10 => "transfer-encoding in http/1.0",
            RequestError::RepeatedChunked => "chunked applied more than once",
            RequestError::UnsupportedTransferCoding => "unsupported transfer coding",
            RequestError::BadConnection => "invalid connection header",
            RequestError::BodyTooLarge => "body too large",
            RequestError::BadChunkSize => "invalid chunk size",
            RequestError::BadChunkExtension => "invalid chunk extension",
            RequestError::ChunkLineTooLong => "chunk line too long",
            RequestError::MissingChunkTerminator => "chunk data not followed by crlf",
            RequestError::TrailerTooLarge => "trailer section too large",
            RequestError::BadTrailer => "invalid trailer field",
            RequestError::ExpectationFailed => "expectation not supported",
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead<'_>>, RequestError> {
    match scan_request(buf) {
        Ok(head) => Ok(Parsed::Complete(head)),
        Err(Stop::Partial) => Ok(Parsed::Partial),
        Err(Stop::Invalid(error)) => Err(error),
    }
}

/// Whether `input` (a request as it arrived, possibly incomplete or malformed) asks for `HEAD`,
/// so that even a refusal of it carries no content (RFC 9110 §9.3.2): the method is the first
/// token after the empty lines a request may start with.
pub fn is_head_request(input: &[u8]) -> bool {
    let mut rest = input;
    while let Some(after) = rest.strip_prefix(b"\r\n") {
        rest = after;
    }
    rest.starts_with(b"HEAD ")
}

/// Offsets of a request line within the buffer.
struct RequestLine {
    method_end: usize,
    target_start: usize,
    target_end: usize,
    minor_version: u8,
    /// Just past the CRLF.
    end: usize,
}

fn scan_request(buf: &[u8]) -> Result<RequestHead<'_>, Stop> {
    let line_start = skip_leading_empty_lines(buf)?;
    let line = scan_request_line(buf, line_start)?;
    let (section_end, head_length) = scan_field_section(buf, line.end)?;

    let method_bytes = &buf[line_start..line.method_end];
    let target_bytes = &buf[line.target_start..line.target_end];
    // Both were checked to be ASCII, so these conversions cannot fail.
    let method_text = std::str::from_utf8(method_bytes).map_err(|_| RequestError::BadMethod)?;
    let target = std::str::from_utf8(target_bytes).map_err(|_| RequestError::BadTarget)?;
    let method = Method::from_token(method_bytes);
    let (path, query) = split_target(method, target)?;

    let fields = FieldTable::new(&buf[line.end..section_end]);
    let minor_version = line.minor_version;
    // Origin-form and asterisk-form name no host: the target URI's host is the Host field's.
    let target_names_host = !(target.starts_with('/') || target == "*");
    check_host(&fields, minor_version, target_names_host)?;
    let body = request_framing(&fields, minor_version)?;
    let (close, keep_alive_option) = connection_options(&fields)?;
    let expect_continue = expects_continue(&fields)? && minor_version >= 1;

    Ok(RequestHead {
        method,
        method_text,
        target,
        path,
        query,
        minor_version,
        head_length,
        body,
        keep_alive: version_keeps_alive(minor_version, close, keep_alive_option),
        expect_continue,
        fields,
    })
}

/// RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
fn skip_leading_empty_lines(buf: &[u8]) -> Result<usize, Stop> {
    let mut position = 0;
    let mut skipped = 0;
    loop {
        match buf.get(position) {
            None => return Err(Stop::Partial),
            Some(b'\r') => match buf.get(position + 1) {
                None => return Err(Stop::Partial),
                Some(b'\n') => {
                    skipped += 1;
                    if skipped > MAX_LEADING_EMPTY_LINES {
                        return Err(RequestError::BadRequestLine.into());
                    }
                    position += 2;
                }
                Some(_) => return Err(RequestError::BareCarriageReturn.into()),
            },
            Some(b'\n') => return Err(RequestError::BareLineFeed.into()),
            Some(_) => return Ok(position),
        }
    }
}

/// `request-line = method SP request-target SP HTTP-version` then CRLF (RFC 9112 §3), with
/// `MAX_REQUEST_LINE` applied also to a line still arriving.
fn scan_request_line(buf: &[u8], start: usize) -> Result<RequestLine, Stop> {
    let window = &buf[..buf.len().min(start.saturating_add(MAX_REQUEST_LINE + 2))];
    match scan_request_line_within(window, start) {
        Err(Stop::Partial) => {
            // Everything seen so far, except a CR that may begin the CRLF, belongs to the line.
            let trailing_carriage_return = usize::from(window.last() == Some(&b'\r'));
            if window.len() - start - trailing_carriage_return > MAX_REQUEST_LINE {
                // The method alone passes the limit: no target has been seen to be too long.
                let method_length = window[start..]
                    .iter()
                    .take_while(|&&byte| is_token_char(byte))
                    .count();
                if method_length > MAX_REQUEST_LINE {
                    Err(RequestError::MethodTooLong.into())
                } else {
                    Err(RequestError::RequestLineTooLong.into())
                }
            } else {
                Err(Stop::Partial)
            }
        }
        other => other,
    }
}

/// What a byte that is not allowed where it stands says about the line.
fn unexpected_in_request_line(byte: u8, otherwise: RequestError) -> RequestError {
    match byte {
        b'\n' => RequestError::BareLineFeed,
        // A line that ends (or whose separator is not a single SP) before the version.
        b'\r' | b' ' | b'\t' => RequestError::BadRequestLine,
        _ => otherwise,
    }
}

fn scan_request_line_within(buf: &[u8], start: usize) -> Result<RequestLine, Stop> {
    // method = token
    let mut index = start;
    while index < buf.len() && is_token_char(buf[index]) {
        index += 1;
    }
    let Some(&after_method) = buf.get(index) else {
        return Err(Stop::Partial);
    };
    if after_method != b' ' || index == start {
        return Err(unexpected_in_request_line(after_method, RequestError::BadMethod).into());
    }
    let method_end = index;

    let target_start = index + 1;
    index = target_start;
    while index < buf.len() && TARGET_CHARS[buf[index] as usize] {
        index += 1;
    }
    let Some(&after_target) = buf.get(index) else {
        return Err(Stop::Partial);
    };
    if after_target != b' ' || index == target_start {
        return Err(unexpected_in_request_line(after_target, RequestError::BadTarget).into());
    }
    let target_end = index;

    let (minor_version, end) = scan_version(buf, target_end + 1)?;
    Ok(RequestLine {
        method_end,
        target_start,
        target_end,
        minor_version,
        end,
    })
}

/// `HTTP-version = HTTP-name "/" DIGIT "." DIGIT` then CRLF (RFC 9112 §2.3), checked byte by
/// byte so that a wrong prefix fails at once. Returns the minor version (0 or 1) and the offset
/// after the CRLF. `HTTP/2` and `HTTP/2.0` style versions are well-formed but unsupported (505).
fn scan_version(buf: &[u8], start: usize) -> Result<(u8, usize), Stop> {
    let bad = |byte: u8| Stop::Invalid(unexpected_in_request_line(byte, RequestError::BadVersion));
    for (offset, &expected) in b"HTTP/".iter().enumerate() {
        match buf.get(start + offset) {
            None => return Err(Stop::Partial),
            Some(&byte) if byte == expected => {}
            Some(&byte) => return Err(bad(byte)),
        }
    }
    let mut index = start + 5;
    let major = match buf.get(index) {
        None => return Err(Stop::Partial),
        Some(&byte) if byte.is_ascii_digit() => byte - b'0',
        Some(&byte) => return Err(bad(byte)),
    };
    index += 1;
    let minor = match buf.get(index) {
        None => return Err(Stop::Partial),
        Some(b'.') => {
            index += 1;
            match buf.get(index) {
                None => return Err(Stop::Partial),
                Some(&byte) if byte.is_ascii_digit() => {
                    index += 1;
                    Some(byte - b'0')
                }
                Some(&byte) => return Err(bad(byte)),
            }
        }
        Some(b'\r') => None,
        Some(&byte) => return Err(bad(byte)),
    };
    match buf.get(index) {
        None => return Err(Stop::Partial),
        Some(b'\r') => {}
        Some(b'\n') => return Err(RequestError::BareLineFeed.into()),
        Some(_) => return Err(RequestError::BadVersion.into()),
    }
    match buf.get(index + 1) {
        None => return Err(Stop::Partial),
        Some(b'\n') => {}
        Some(_) => return Err(RequestError::BareCarriageReturn.into()),
    }
    match (major, minor) {
        (1, Some(0)) => Ok((0, index + 2)),
        (1, Some(_)) => Ok((1, index + 2)),
        (1, None) => Err(RequestError::BadVersion.into()),
        _ => Err(RequestError::UnsupportedVersion.into()),
    }
}

/// Checks the target against the form its method allows (RFC 9112 §3.2) and returns its path
/// and query.
fn split_target(method: Method, target: &str) -> Result<(&str, Option<&str>), RequestError> {
    let bytes = target.as_bytes();
    if method == Method::Connect {
        // authority-form = uri-host ":" port, and only for CONNECT (RFC 9112 §3.2.3).
        return if is_valid_authority(bytes, true, true) {
            Ok((target, None))
        } else {
            Err(RequestError::BadTarget)
        };
    }
    if target == "*" {
        // asterisk-form, only for a server-wide OPTIONS (RFC 9112 §3.2.4).
        return if method == Method::Options {
            Ok((target, None))
        } else {
            Err(RequestError::BadTarget)
        };
    }
    if bytes.first() == Some(&b'/') {
        return split_path_and_query(target);
    }
    // absolute-form (RFC 9112 §3.2.2): only http and https URIs, with a non-empty host and no
    // userinfo (RFC 9110 §4.2).
    let scheme_end = target.find("://").ok_or(RequestError::BadTarget)?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(RequestError::BadTarget);
    }
    let after_scheme = &target[scheme_end + 3..];
    let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    if !is_valid_authority(&after_scheme.as_bytes()[..authority_end], true, false) {
        return Err(RequestError::BadTarget);
    }
    let rest = &after_scheme[authority_end..];
    if rest.is_empty() {
        return Ok(("/", None));
    }
    let (path, query) = split_path_and_query(rest)?;
    Ok((if path.is_empty() { "/" } else { path }, query))
}

fn split_path_and_query(target: &str) -> Result<(&str, Option<&str>), RequestError> {
    let bytes = target.as_bytes();
    if !bytes.iter().all(|&byte| PATH_CHARS[byte as usize]) || !has_valid_percent_encoding(bytes) {
        return Err(RequestError::BadTarget);
    }
    Ok(match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    })
}

/// RFC 9112 §3.2: exactly one `Host` on HTTP/1.1, never more than one, and a valid value.
/// An empty one passes only when the target names its own host (absolute-form, CONNECT's
/// authority-form; RFC 9112 §3.2.2 has Host ignored then): otherwise the target URI would be an
/// `http` URI with an empty host, which RFC 9110 §4.2.1 calls invalid and RFC 9112 §3.3 lets a
/// server refuse. HTTP/1.0 may leave Host out (the server's own address is the default then),
/// but an empty one is refused there too, as nginx does: it is a client naming no host.
fn check_host(
    section: &FieldTable<'_>,
    minor_version: u8,
    target_names_host: bool,
) -> Result<(), RequestError> {
    let mut hosts = field_values(section, "host");
    match (hosts.next(), hosts.next()) {
        (None, _) if minor_version >= 1 => Err(RequestError::MissingHost),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(RequestError::MultipleHost),
        (Some(value), None) if value.is_empty() && target_names_host => Ok(()),
        (Some(value), None) if is_valid_authority(value, true, false) => Ok(()),
        (Some(_), None) => Err(RequestError::BadHost),
    }
}

/// RFC 9112 §6.1–6.3 for requests.
fn request_framing(
    section: &FieldTable<'_>,
    minor_version: u8,
) -> Result<BodyFraming, RequestError> {
    let has_transfer_encoding = find_field(section, "transfer-encoding").is_some();
    let has_content_length = find_field(section, "content-length").is_some();
    if has_transfer_encoding {
        if minor_version == 0 {
            return Err(RequestError::TransferEncodingInHttp10);
        }
        if has_content_length {
            return Err(RequestError::LengthWithTransferEncoding);
        }
        return match transfer_codings(section)? {
            TransferCodings::ChunkedOnly => Ok(BodyFraming::Chunked),
            TransferCodings::ChunkedLast => Err(RequestError::UnsupportedTransferCoding),
            TransferCodings::NotChunkedLast | TransferCodings::Absent => {
                Err(RequestError::TransferEncodingNotChunked)
            }
        };
    }
    match content_length(section)? {
        None => Ok(BodyFraming::None),
        Some(length) if length > MAX_BODY => Err(RequestError::BodyTooLarge),
        Some(length) => Ok(BodyFraming::Length(length)),
    }
}

/// `Expect = #expectation` (RFC 9110 §10.1.1): only `100-continue` is known; anything else
/// gets 417.
fn expects_continue(section: &FieldTable<'_>) -> Result<bool, RequestError> {
    let mut expect_continue = false;
    for expectation in list_elements(section, "expect") {
        if !expectation.eq_ignore_ascii_case(b"100-continue") {
            return Err(RequestError::ExpectationFailed);
        }
        expect_continue = true;
    }
    Ok(expect_continue)
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies.

/// Where the chunked decoder is within RFC 9112 §7.1:
/// `chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF`,
/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`,
/// `chunk-ext-val = token / quoted-string`, `last-chunk = 1*("0") [ chunk-ext ] CRLF`,
/// then `trailer-section CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading `1*HEXDIG`.
    Size,
    /// Whitespace after the size: only BWS before ";" may follow.
    SizeWhitespace,
    /// After ";", optional BWS, then a name.
    ExtensionBeforeName,
    ExtensionName,
    /// Whitespace after a name: "=" or ";" must follow.
    ExtensionAfterNameWhitespace,
    /// After "=", optional BWS, then a token or a quoted string.
    ExtensionBeforeValue,
    ExtensionTokenValue,
    ExtensionQuotedValue,
    ExtensionQuotedPair,
    /// Just after a closing quote.
    ExtensionAfterQuotedValue,
    /// Whitespace after a value: only ";" may follow.
    ExtensionAfterValueWhitespace,
    /// The CR of the size line was read.
    SizeLineFeed,
    Data,
    DataCarriageReturn,
    DataLineFeed,
    TrailerLineStart,
    TrailerName,
    TrailerValue,
    TrailerLineFeed,
    FinalLineFeed,
    Finished,
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1), including chunk extensions and trailer
/// fields, with the body and trailer limits applied.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    max_body: u64,
    /// Data bytes announced so far (counted when each size is read).
    total: u64,
    /// The current chunk size while reading it; the data bytes still due while in `Data`.
    size: u64,
    /// A digit of the current chunk size has been read (leading zeros leave `size` at 0).
    size_started: bool,
    size_line_length: usize,
    trailer_bytes: usize,
    trailer_fields: usize,
    /// The first violation; the decoder repeats it rather than go on from a broken state.
    failed: Option<RequestError>,
}

/// What one call to [`ChunkedDecoder::decode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkProgress {
    /// Input bytes used; the caller drops them and feeds the rest (plus new bytes) next time.
    pub consumed: usize,
    /// The last chunk and the trailer section have been read; bytes after `consumed` belong to
    /// the next message.
    pub finished: bool,
}

impl ChunkedDecoder {
    /// `max_body`: the most data bytes accepted before `BodyTooLarge`.
    pub fn new(max_body: u64) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            max_body,
            total: 0,
            size: 0,
            size_started: false,
            size_line_length: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            failed: None,
        }
    }

    /// Consumes as much of `input` as it can; data bytes are appended to `data` when it is `Some`
    /// and dropped otherwise.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<ChunkProgress, RequestError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let mut index = 0;
        while index < input.len() && self.state != ChunkState::Finished {
            if self.state == ChunkState::Data {
                let available = (input.len() - index) as u64;
                let take = self.size.min(available) as usize;
                if let Some(data) = data.as_deref_mut() {
                    data.extend_from_slice(&input[index..index + take]);
                }
                index += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCarriageReturn;
                }
                continue;
            }
            if let Err(error) = self.step(input[index]) {
                self.failed = Some(error);
                return Err(error);
            }
            index += 1;
        }
        Ok(ChunkProgress {
            consumed: index,
            finished: self.state == ChunkState::Finished,
        })
    }

    /// Advances by one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<(), RequestError> {
        use ChunkState as S;
        if matches!(
            self.state,
            S::Size
                | S::SizeWhitespace
                | S::ExtensionBeforeName
                | S::ExtensionName
                | S::ExtensionAfterNameWhitespace
                | S::ExtensionBeforeValue
                | S::ExtensionTokenValue
                | S::ExtensionQuotedValue
                | S::ExtensionQuotedPair
                | S::ExtensionAfterQuotedValue
                | S::ExtensionAfterValueWhitespace
        ) && byte != b'\r'
        {
            self.size_line_length += 1;
            if self.size_line_length > MAX_CHUNK_LINE {
                return Err(RequestError::ChunkLineTooLong);
            }
        }
        if matches!(
            self.state,
            S::TrailerName | S::TrailerValue | S::TrailerLineFeed
        ) || (self.state == S::TrailerLineStart && byte != b'\r')
        {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_HEADER_SECTION {
                return Err(RequestError::TrailerTooLarge);
            }
        }
        let extension_error = || {
            if byte == b'\n' {
                RequestError::BareLineFeed
            } else {
                RequestError::BadChunkExtension
            }
        };
        self.state = match self.state {
            S::Size => match byte {
                _ if byte.is_ascii_hexdigit() => {
                    // `1*HEXDIG` (RFC 9112 §7.1): leading zeros are as valid as in
                    // Content-Length, and MAX_CHUNK_LINE bounds how many. Only a value that
                    // would not fit a u64 is refused, before the shift that would lose it.
                    if self.size >> 60 != 0 {
                        return Err(RequestError::BadChunkSize);
                    }
                    self.size_started = true;
                    self.size = (self.size << 4) | u64::from(hex_value(byte));
                    S::Size
                }
                _ if !self.size_started => {
                    return Err(if byte == b'\n' {
                        RequestError::BareLineFeed
                    } else {
                        RequestError::BadChunkSize
                    })
                }
                b' ' | b'\t' => self.end_size(S::SizeWhitespace)?,
                b';' => self.end_size(S::ExtensionBeforeName)?,
                b'\r' => self.end_size(S::SizeLineFeed)?,
                b'\n' => return Err(RequestError::BareLineFeed),
                _ => return Err(RequestError::BadChunkSize),
            },
            S::SizeWhitespace => match byte {
                b' ' | b'\t' => S::SizeWhitespace,
                b';' => S::ExtensionBeforeName,
                _ => return Err(RequestError::BadChunkSize),
            },
            S::ExtensionBeforeName => match byte {
                b' ' | b'\t' => S::ExtensionBeforeName,
                _ if is_token_char(byte) => S::ExtensionName,
                _ => return Err(extension_error()),
            },
            S::ExtensionName => match byte {
                _ if is_token_char(byte) => S::ExtensionName,
                b' ' | b'\t' => S::ExtensionAfterNameWhitespace,
                b'=' => S::ExtensionBeforeValue,
                b';' => S::ExtensionBeforeName,
                b'\r' => S::SizeLineFeed,
                _ => return Err(extension_error()),
            },
            S::ExtensionAfterNameWhitespace => match byte {
                b' ' | b'\t' => S::ExtensionAfterNameWhitespace,
                b'=' => S::ExtensionBeforeValue,
                b';' => S::ExtensionBeforeName,
                _ => return Err(extension_error()),
            },
            S::ExtensionBeforeValue => match byte {
                b' ' | b'\t' => S::ExtensionBeforeValue,
                b'"' => S::ExtensionQuotedValue,
                _ if is_token_char(byte) => S::ExtensionTokenValue,
                _ => return Err(extension_error()),
            },
            S::ExtensionTokenValue => match byte {
                _ if is_token_char(byte) => S::ExtensionTokenValue,
                b' ' | b'\t' => S::ExtensionAfterValueWhitespace,
                b';' => S::ExtensionBeforeName,
                b'\r' => S::SizeLineFeed,
                _ => return Err(extension_error()),
            },
            S::ExtensionQuotedValue => match byte {
                b'"' => S::ExtensionAfterQuotedValue,
                b'\\' => S::ExtensionQuotedPair,
                _ if QUOTED_TEXT_CHARS[byte as usize] => S::ExtensionQuotedValue,
                _ => return Err(extension_error()),
            },
            S::ExtensionQuotedPair => match byte {
                _ if QUOTED_PAIR_CHARS[byte as usize] => S::ExtensionQuotedValue,
                _ => return Err(extension_error()),
            },
            S::ExtensionAfterQuotedValue => match byte {
                b' ' | b'\t' => S::ExtensionAfterValueWhitespace,
                b';' => S::ExtensionBeforeName,
                b'\r' => S::SizeLineFeed,
                _ => return Err(extension_error()),
            },
            S::ExtensionAfterValueWhitespace => match byte {
                b' ' | b'\t' => S::ExtensionAfterValueWhitespace,
                b';' => S::ExtensionBeforeName,
                _ => return Err(extension_error()),
            },
            S::SizeLineFeed => match byte {
                b'\n' => {
                    self.size_started = false;
                    self.size_line_length = 0;
                    if self.size == 0 {
                        S::TrailerLineStart
                    } else {
                        S::Data
                    }
                }
                _ => return Err(RequestError::BareCarriageReturn),
            },
            // Only reached with a zero size left, which `decode` never leaves in this state.
            S::Data => S::DataCarriageReturn,
            S::DataCarriageReturn => match byte {
                b'\r' => S::DataLineFeed,
                _ => return Err(RequestError::MissingChunkTerminator),
            },
            S::DataLineFeed => match byte {
                b'\n' => S::Size,
                _ => return Err(RequestError::MissingChunkTerminator),
            },
            S::TrailerLineStart => match byte {
                b'\r' => S::FinalLineFeed,
                b'\n' => return Err(RequestError::BareLineFeed),
                _ if is_token_char(byte) => {
                    if self.trailer_fields == MAX_HEADER_FIELDS {
                        return Err(RequestError::TrailerTooLarge);
                    }
                    S::TrailerName
                }
                _ => return Err(RequestError::BadTrailer),
            },
            S::TrailerName => match byte {
                _ if is_token_char(byte) => S::TrailerName,
                b':' => S::TrailerValue,
                b'\n' => return Err(RequestError::BareLineFeed),
                _ => return Err(RequestError::BadTrailer),
            },
            S::TrailerValue => match byte {
                _ if FIELD_VALUE_CHARS[byte as usize] => S::TrailerValue,
                b'\r' => S::TrailerLineFeed,
                b'\n' => return Err(RequestError::BareLineFeed),
                _ => return Err(RequestError::BadTrailer),
            },
            S::TrailerLineFeed => match byte {
                b'\n' => {
                    self.trailer_fields += 1;
                    S::TrailerLineStart
                }
                _ => return Err(RequestError::BareCarriageReturn),
            },
            S::FinalLineFeed => match byte {
                b'\n' => S::Finished,
                _ => return Err(RequestError::BareCarriageReturn),
            },
            S::Finished => S::Finished,
        };
        Ok(())
    }

    /// The size digits are complete: count them against the body limit before any data.
    fn end_size(&mut self, next: ChunkState) -> Result<ChunkState, RequestError> {
        let total = self
            .total
            .checked_add(self.size)
            .ok_or(RequestError::BodyTooLarge)?;
        if total > self.max_body {
            return Err(RequestError::BodyTooLarge);
        }
        self.total = total;
        Ok(next)
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Writers.

/// The standard reason phrase of a status code ("OK", "Forbidden", …; "" if unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    // RFC 9110 §15, plus 429 (RFC 6585) and 431 (RFC 6585). 306 and 418 are reserved, unused.
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The value of the `Server` header.
pub const SERVER_NAME: &str = concat!("unreliable/", env!("CARGO_PKG_VERSION"));

/// A complete response with a known length.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub status: u16,
    /// Omitted when empty.
    pub content_type: &'a str,
    /// Extra fields such as `Allow`; names and values must already be valid field syntax.
    pub extra_headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// `false` adds `Connection: close`.
    pub keep_alive: bool,
    /// The request's HTTP/1.x minor version: an HTTP/1.0 request kept alive is told so.
    pub request_minor_version: u8,
    /// For HEAD: the headers say `Content-Length` of `body`, but the body is not written.
    pub head_only: bool,
}

fn write_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn write_hex(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 16];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(value & 0xF) as usize];
        value >>= 4;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Status line, `Date`, `Server` and (when not empty) `Content-Type`.
fn write_head_start(out: &mut Vec<u8>, status: u16, content_type: &str, date: &[u8; 29]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // A status outside 100..=999 would not be three digits; the writers are only ever handed
    // real statuses, but keep the line well-formed whatever happens.
    write_decimal(out, u64::from(status.clamp(100, 999)));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    write_field(out, "Date", date);
    write_field(out, "Server", SERVER_NAME.as_bytes());
    if !content_type.is_empty() {
        write_field(out, "Content-Type", content_type.as_bytes());
    }
}

/// Appends the status line, `Date`, `Server`, `Content-Type`, `Content-Length`, `Connection`
/// when closing, the extra headers and the body. 1xx and 204 get neither `Content-Length` nor a
/// body (RFC 9110 §8.6, §15.3.5). Allocates nothing beyond `out` growing.
pub fn write_response(out: &mut Vec<u8>, response: &Response<'_>, date: &[u8; 29]) {
    write_head(out, response, response.body.len(), date);
    if !response.head_only && !is_bodiless(response.status) {
        out.extend_from_slice(response.body);
    }
}

/// The same response as [`write_response`], for a body the caller has already appended to `out`
/// from `body_start` on: the body is generated in place instead of through a buffer of its own,
/// and the head is put in front of it (one in-place rotation, no allocation beyond `out`
/// growing). `response.body` is not used and should be empty.
pub fn write_response_around_body(
    out: &mut Vec<u8>,
    body_start: usize,
    response: &Response<'_>,
    date: &[u8; 29],
) {
    debug_assert!(response.body.is_empty(), "the body is in `out`");
    let body_start = body_start.min(out.len());
    let body_length = out.len() - body_start;
    write_head(out, response, body_length, date);
    let head_length = out.len() - body_start - body_length;
    out[body_start..].rotate_right(head_length);
    if response.head_only || is_bodiless(response.status) {
        out.truncate(body_start + head_length);
    }
}

/// 1xx and 204 responses carry no body and no `Content-Length`.
fn is_bodiless(status: u16) -> bool {
    status < 200 || status == 204
}

/// Everything of [`write_response`] but the body, for a body of `body_length` bytes.
fn write_head(out: &mut Vec<u8>, response: &Response<'_>, body_length: usize, date: &[u8; 29]) {
    write_head_start(out, response.status, response.content_type, date);
    if !is_bodiless(response.status) {
        out.extend_from_slice(b"Content-Length: ");
        write_decimal(out, body_length as u64);
        out.extend_from_slice(b"\r\n");
    }
    if !response.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if response.request_minor_version == 0 {
        // HTTP/1.0 closes by default: a persistent answer has to say so (RFC 9112 §9.3).
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    for (name, value) in response.extra_headers {
        write_field(out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a head for a body of unknown length: `Transfer-Encoding: chunked` on HTTP/1.1, or no
/// length and `Connection: close` on HTTP/1.0 (the body then ends when the connection closes).
/// `keep_alive` without `chunked` is for an HTTP/1.0 answer to HEAD only: no body follows it.
/// The extra headers follow `Content-Type`.
pub fn write_streaming_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    chunked: bool,
    keep_alive: bool,
    date: &[u8; 29],
) {
    write_head_start(out, status, content_type, date);
    for (name, value) in extra_headers {
        write_field(out, name, value.as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if !chunked {
        // Only an HTTP/1.0 answer to HEAD, which has no body to end with the connection; a 1.0
        // client needs to be told the connection persists.
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk (nothing for empty data: an empty chunk would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the end of the (empty) trailer section.
pub fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

// ---------------------------------------------------------------------------------------------
// Responses (for the client).

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// Read until the server closes the connection.
    UntilClose,
}

/// A parsed response head, for the client.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub head_length: usize,
    pub body: ResponseFraming,
    /// Version default and `Connection`; always `false` for `UntilClose`.
    pub keep_alive: bool,
    fields: FieldTable<'b>,
}

impl<'b> ResponseHead<'b> {
    /// The value of the first field named `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        find_field(&self.fields, name)
    }
}

/// Why a server's response is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    MalformedStatusLine,
    /// Not HTTP/1.x.
    UnsupportedVersion,
    BadStatusCode,
    StatusLineTooLong,
    /// A field line breaks the field grammar (which way is inside).
    MalformedHeader(RequestError),
    HeaderSectionTooLarge,
    TooManyHeaderFields,
    BadContentLength,
    ConflictingContentLength,
    LengthWithTransferEncoding,
    BadTransferEncoding,
    RepeatedChunked,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ResponseError::MalformedStatusLine => "malformed status line",
            ResponseError::UnsupportedVersion => "unsupported http version in response",
            ResponseError::BadStatusCode => "invalid status code",
            ResponseError::StatusLineTooLong => "status line too long",
            ResponseError::MalformedHeader(error) => {
                return write!(f, "malformed header field: {}", error.reason())
            }
            ResponseError::HeaderSectionTooLarge => "response header section too large",
            ResponseError::TooManyHeaderFields => "too many response header fields",
            ResponseError::BadContentLength => "invalid content-length in response",
            ResponseError::ConflictingContentLength => "conflicting content-length in response",
            ResponseError::LengthWithTransferEncoding => {
                "content-length with transfer-encoding in response"
            }
            ResponseError::BadTransferEncoding => "invalid transfer-encoding in response",
            ResponseError::RepeatedChunked => "chunked applied more than once in response",
        };
        f.write_str(text)
    }
}

impl From<RequestError> for ResponseError {
    fn from(error: RequestError) -> ResponseError {
        match error {
            RequestError::HeaderSectionTooLarge => ResponseError::HeaderSectionTooLarge,
            RequestError::TooManyHeaderFields => ResponseError::TooManyHeaderFields,
            RequestError::BadContentLength => ResponseError::BadContentLength,
            RequestError::ConflictingContentLength => ResponseError::ConflictingContentLength,
            RequestError::RepeatedChunked => ResponseError::RepeatedChunked,
            RequestError::BadTransferEncoding => ResponseError::BadTransferEncoding,
            other => ResponseError::MalformedHeader(other),
        }
    }
}

/// Parses a response head; `request_was_head` makes the body empty whatever the headers say.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
) -> Result<Parsed<ResponseHead<'_>>, ResponseError> {
    // The reason phrase is checked for syntax but not kept: nothing acts on it (RFC 9112 §4).
    let (minor_version, status, _reason, line_end) = match scan_status_line(buf)? {
        Parsed::Complete(line) => line,
        Parsed::Partial => return Ok(Parsed::Partial),
    };
    let (section_end, head_length) = match scan_field_section(buf, line_end) {
        Ok(ends) => ends,
        Err(Stop::Partial) => return Ok(Parsed::Partial),
        Err(Stop::Invalid(error)) => return Err(error.into()),
    };
    let fields = FieldTable::new(&buf[line_end..section_end]);
    let body = response_framing(&fields, minor_version, status, request_was_head)?;
    let (close, keep_alive_option) = connection_options(&fields)?;
    let keep_alive = body != ResponseFraming::UntilClose
        && version_keeps_alive(minor_version, close, keep_alive_option);
    Ok(Parsed::Complete(ResponseHead {
        status,
        head_length,
        body,
        keep_alive,
        fields,
    }))
}

type StatusLine<'b> = (u8, u16, &'b str, usize);

/// `status-line = HTTP-version SP status-code SP [ reason-phrase ]` then CRLF (RFC 9112 §4);
/// the SP before an absent reason may be missing too, as clients should tolerate.
fn scan_status_line(buf: &[u8]) -> Result<Parsed<StatusLine<'_>>, ResponseError> {
    let window = &buf[..buf.len().min(MAX_STATUS_LINE + 2)];
    let Some(line_end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        // Fail at once on anything that cannot become a status line; a CR at the very end may
        // still be the start of the CRLF.
        let arrived = window.strip_suffix(b"\r").unwrap_or(window);
        check_status_line(arrived, false)?;
        if arrived.len() > MAX_STATUS_LINE {
            return Err(ResponseError::StatusLineTooLong);
        }
        return Ok(Parsed::Partial);
    };
    let Some((minor_version, status, reason)) = check_status_line(&window[..line_end], true)?
    else {
        return Err(ResponseError::MalformedStatusLine);
    };
    let reason = std::str::from_utf8(reason).unwrap_or("");
    Ok(Parsed::Complete((
        minor_version,
        status,
        reason,
        line_end + 2,
    )))
}

/// The minor version (0 or 1), the status and the reason of a whole status line.
type CheckedStatus<'b> = (u8, u16, &'b [u8]);

/// Checks a status line left to right: `line` is the whole line without its CRLF when `ended`,
/// or what has arrived of it. The first byte that breaks the grammar decides the error, so a
/// response gets the same verdict however TCP split it. `Ok(None)`: nothing wrong yet, but the
/// line is not complete. Another major version is named as such (`HTTP/2.0`, `HTTP/2 200`).
fn check_status_line(line: &[u8], ended: bool) -> Result<Option<CheckedStatus<'_>>, ResponseError> {
    use ResponseError::{BadStatusCode, MalformedStatusLine as Malformed, UnsupportedVersion};
    // What running out of bytes at some point means.
    let short = if ended { Err(Malformed) } else { Ok(None) };
    for (index, &expected) in b"HTTP/".iter().enumerate() {
        match line.get(index) {
            None => return short,
            Some(&byte) if byte != expected => return Err(Malformed),
            Some(_) => {}
        }
    }
    let minor_version = match line[5..] {
        [] => return short,
        [b'1'] | [b'1', b'.'] => return short,
        [b'1', b'.', minor, ..] if minor.is_ascii_digit() => u8::from(minor != b'0'),
        [major, ..] if !major.is_ascii_digit() || major == b'1' => return Err(Malformed),
        [_] | [_, b'.'] => return short,
        [_, b' ', ..] => return Err(UnsupportedVersion),
        [_, b'.', minor, ..] if minor.is_ascii_digit() => return Err(UnsupportedVersion),
        _ => return Err(Malformed),
    };
    match line.get(8) {
        None => return short,
        Some(b' ') => {}
        Some(_) => return Err(Malformed),
    }
    let mut status = 0u16;
    for index in 9..12 {
        match line.get(index) {
            None => return short,
            Some(digit) if digit.is_ascii_digit() => status = status * 10 + u16::from(digit - b'0'),
            Some(_) => return Err(BadStatusCode),
        }
    }
    if status < 100 {
        return Err(BadStatusCode);
    }
    let reason = match &line[12..] {
        [] => &[][..],
        [b' ', reason @ ..] => reason,
        _ => return Err(Malformed),
    };
    // reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    if !reason.iter().all(|&byte| FIELD_VALUE_CHARS[byte as usize]) {
        return Err(Malformed);
    }
    Ok(if ended {
        Some((minor_version, status, reason))
    } else {
        None
    })
}

/// RFC 9112 §6.3 for responses.
fn response_framing(
    section: &FieldTable<'_>,
    minor_version: u8,
    status: u16,
    request_was_head: bool,
) -> Result<ResponseFraming, ResponseError> {
    if request_was_head || status < 200 || status == 204 || status == 304 {
        return Ok(ResponseFraming::None);
    }
    let has_transfer_encoding = find_field(section, "transfer-encoding").is_some();
    let has_content_length = find_field(section, "content-length").is_some();
    if has_transfer_encoding {
        // Both at once "ought to be handled as an error" (RFC 9112 §6.3 item 3).
        if has_content_length {
            return Err(ResponseError::LengthWithTransferEncoding);
        }
        // An HTTP/1.0 message with Transfer-Encoding has faulty framing (RFC 9112 §6.1): read
        // to the close rather than trust it.
        if minor_version == 0 {
            return Ok(ResponseFraming::UntilClose);
        }
        return Ok(match transfer_codings(section)? {
            TransferCodings::ChunkedOnly | TransferCodings::ChunkedLast => ResponseFraming::Chunked,
            TransferCodings::NotChunkedLast | TransferCodings::Absent => {
                ResponseFraming::UntilClose
            }
        });
    }
    Ok(match content_length(section)? {
        Some(length) => ResponseFraming::Length(length),
        None => ResponseFraming::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> RequestHead<'_> {
        match parse_request(buf) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!(
                "expected a complete request for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn error_of(buf: &[u8]) -> RequestError {
        match parse_request(buf) {
            Err(error) => error,
            other => panic!(
                "expected an error for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn byte_classes_follow_the_grammar() {
        for byte in 0..=255u8 {
            let expected_token = byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
            assert_eq!(is_token_char(byte), expected_token, "tchar {byte:#x}");
            let expected_value =
                byte == b' ' || byte == b'\t' || (0x21..=0x7E).contains(&byte) || byte >= 0x80;
            assert_eq!(
                FIELD_VALUE_CHARS[byte as usize], expected_value,
                "field value {byte:#x}"
            );
        }
        for byte in b"\x00\x1f\x7f \"#<>\\^`{|}\x80\xff" {
            assert!(!TARGET_CHARS[*byte as usize], "target {byte:#x}");
        }
        assert!(TARGET_CHARS[b'[' as usize] && !PATH_CHARS[b'[' as usize]);
    }

    #[test]
    fn parses_a_simple_get() {
        let buf = b"GET /getbalance?account=7&x=%20 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent:  test/1 \r\nX-Empty:\r\n\r\nrest";
        let head = complete(buf);
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.method_text, "GET");
        assert_eq!(head.target, "/getbalance?account=7&x=%20");
        assert_eq!(head.path, "/getbalance");
        assert_eq!(head.query, Some("account=7&x=%20"));
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.head_length, buf.len() - 4);
        assert_eq!(head.body, BodyFraming::None);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(head.header("host"), Some(&b"example.com:8080"[..]));
        assert_eq!(head.header("USER-AGENT"), Some(&b"test/1"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
        assert_eq!(head.header("missing"), None);
        assert_eq!(head.fields.len(), 3);
    }

    #[test]
    fn good_requests() {
        struct Case {
            request: &'static [u8],
            method: Method,
            path: &'static str,
            query: Option<&'static str>,
            minor: u8,
            body: BodyFraming,
            keep_alive: bool,
            expect_continue: bool,
        }
        let case = |request, method, path, query, minor, body, keep_alive, expect_continue| Case {
            request,
            method,
            path,
            query,
            minor,
            body,
            keep_alive,
            expect_continue,
        };
        use BodyFraming as B;
        use Method as M;
        let cases = [
            case(
                &b"GET / HTTP/1.0\r\n\r\n"[..],
                M::Get,
                "/",
                None,
                0,
                B::None,
                false,
                false,
            ),
            case(
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                M::Get,
                "/",
                None,
                0,
                B::None,
                true,
                false,
            ),
            case(
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                M::Get,
                "/",
                None,
                0,
                B::None,
                false,
                false,
            ),
            case(
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n",
                M::Get,
                "/",
                None,
                1,
                B::None,
                false,
                false,
            ),
            case(
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo\r\nConnection: ,,keep-alive\r\n\r\n",
                M::Get,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"GET / HTTP/1.9\r\nHost: a\r\n\r\n",
                M::Get,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Get,
                "/x",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"HEAD /h? HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Head,
                "/h",
                Some(""),
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Length(5),
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Length(5),
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Length(7),
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Length(0),
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Chunked,
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked,\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Chunked,
                true,
                false,
            ),
            // An empty line of a list field is an empty element (RFC 9110 §5.3, §5.6.1.2).
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Chunked,
                true,
                false,
            ),
            case(
                b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n",
                M::Post,
                "/p",
                None,
                1,
                B::Chunked,
                true,
                false,
            ),
            case(
                b"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n",
                M::Put,
                "/p",
                None,
                1,
                B::Length(3),
                true,
                true,
            ),
            case(
                b"PUT /p HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
                M::Put,
                "/p",
                None,
                0,
                B::Length(3),
                false,
                false,
            ),
            case(
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Options,
                "*",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"OPTIONS /o HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Options,
                "/o",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                M::Connect,
                "example.com:443",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n",
                M::Connect,
                "[::1]:443",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"GET http://example.com HTTP/1.1\r\nHost: other\r\n\r\n",
                M::Get,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"GET HTTP://example.com:80?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
                M::Get,
                "/",
                Some("q=1"),
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"GET https://[::1]:8443/a/b?c HTTP/1.1\r\nHost: x\r\n\r\n",
                M::Get,
                "/a/b",
                Some("c"),
                1,
                B::None,
                true,
                false,
            ),
            // An empty Host where the target names the host: it is ignored (RFC 9112 §3.2.2).
            case(
                b"DELETE http://h/d HTTP/1.1\r\nHost:\r\n\r\n",
                M::Delete,
                "/d",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Other,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"M-SEARCH / HTTP/1.1\r\nHost: a\r\n\r\n",
                M::Other,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"TRACE / HTTP/1.1\r\nHost: a\r\nX: \x80\xff obs text\t\r\n\r\n",
                M::Trace,
                "/",
                None,
                1,
                B::None,
                true,
                false,
            ),
            case(
                b"PATCH /a:b@c/!$&'()*+,;=-._~ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                M::Patch,
                "/a:b@c/!$&'()*+,;=-._~",
                None,
                1,
                B::None,
                true,
                false,
            ),
        ];
        for case in cases {
            let head = complete(case.request);
            let shown = String::from_utf8_lossy(case.request);
            assert_eq!(head.method, case.method, "{shown}");
            assert_eq!(head.path, case.path, "{shown}");
            assert_eq!(head.query, case.query, "{shown}");
            assert_eq!(head.minor_version, case.minor, "{shown}");
            assert_eq!(head.body, case.body, "{shown}");
            assert_eq!(head.keep_alive, case.keep_alive, "{shown}");
            assert_eq!(head.expect_continue, case.expect_continue, "{shown}");
            assert_eq!(head.head_length, case.request.len(), "{shown}");
        }
    }

    #[test]
    fn bad_requests() {
        use RequestError as E;
        let cases: &[(&[u8], RequestError)] = &[
            // Request line.
            (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", E::BadRequestLine),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", E::BadRequestLine),
            (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", E::BadRequestLine),
            (b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", E::BadRequestLine),
            (b"GET /\r\n\r\n", E::BadRequestLine),
            (b"GET\r\n\r\n", E::BadRequestLine),
            (b"GE(T / HTTP/1.1\r\n\r\n", E::BadMethod),
            (b"GET\x00", E::BadMethod),
            (b"G\xc3\xa9T / HTTP/1.1\r\n\r\n", E::BadMethod),
            (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / http/1.1\r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / HTTP/1\r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / HTTP/11.1\r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", E::BadVersion),
            (b"GET / HTTP/a.1\r\n", E::BadVersion),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", E::UnsupportedVersion),
            (b"GET / HTTP/3\r\nHost: a\r\n\r\n", E::UnsupportedVersion),
            (b"GET / HTTP/0.9\r\n\r\n", E::UnsupportedVersion),
            (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET /a\x01 HTTP/1.1\r\n", E::BadTarget),
            (b"GET /\x7f HTTP/1.1\r\n", E::BadTarget),
            (b"GET /\xc3\xa9 HTTP/1.1\r\n", E::BadTarget),
            (b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET /{x} HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET /%4 HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET /[x] HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"CONNECT example.com:99999 HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET ftp://example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET http:///path HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET http://user@example.com/ HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"GET http://ex ample/ HTTP/1.1\r\n", E::BadVersion),
            // Line endings.
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", E::BareLineFeed),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", E::BareLineFeed),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", E::BareLineFeed),
            (b"GET / HTTP/1.1\rHost: a\r\n\r\n", E::BareCarriageReturn),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", E::BareCarriageReturn),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\rX", E::BareCarriageReturn),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n", E::BareCarriageReturn),
            (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", E::BareLineFeed),
            (b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", E::BareCarriageReturn),
            (b"GET /\n", E::BareLineFeed),
            (b"GET\n", E::BareLineFeed),
            // Field lines.
            (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", E::WhitespaceAfterStartLine),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  c\r\n\r\n", E::ObsoleteLineFolding),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", E::ObsoleteLineFolding),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", E::WhitespaceBeforeColon),
            (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", E::WhitespaceBeforeColon),
            (b"GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", E::BadHeaderName),
            (b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", E::BadHeaderName),
            (b"GET / HTTP/1.1\r\nHost\r\n\r\n", E::BadHeaderName),
            (b"GET / HTTP/1.1\r\nX\xffY: a\r\n", E::BadHeaderName),
            (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", E::BadHeaderValue),
            (b"GET / HTTP/1.1\r\nX: \x1b[31m\r\n", E::BadHeaderValue),
            (b"GET / HTTP/1.1\r\nX: \x7f\r\n", E::BadHeaderValue),
            // Host.
            (b"GET / HTTP/1.1\r\n\r\n", E::MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", E::MultipleHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", E::MultipleHost),
            (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", E::MultipleHost),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: [:::::]:80\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", E::BadHost),
            // Empty, where only Host could name the host (RFC 9110 §4.2.1).
            (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", E::BadHost),
            (b"GET / HTTP/1.0\r\nHost: \r\n\r\n", E::BadHost),
            (b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n", E::BadHost),
            (b"GET http://[zz]/ HTTP/1.1\r\nHost: a\r\n\r\n", E::BadTarget),
            (b"CONNECT [v1]:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", E::BadTarget),
            // Content-Length.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1.0\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", E::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", E::ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", E::ConflictingContentLength),
            // Transfer-Encoding.
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", E::LengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", E::LengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked , identity\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", E::TransferEncodingNotChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", E::WhitespaceBeforeColon),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", E::UnsupportedTransferCoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", E::UnsupportedTransferCoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", E::RepeatedChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", E::RepeatedChunked),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", E::TransferEncodingInHttp10),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", E::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", E::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", E::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", E::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked chunked\r\n\r\n", E::BadTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;level=\"1,2\r\n\r\n", E::BadTransferEncoding),
            // Other fields.
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close x\r\n\r\n", E::BadConnection),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\n\r\n", E::ExpectationFailed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", E::ExpectationFailed),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue;x=1\r\n\r\n", E::ExpectationFailed),
        ];
        for &(request, expected) in cases {
            let shown = String::from_utf8_lossy(request);
            assert_eq!(parse_request(request).err(), Some(expected), "{shown:?}");
        }
    }

    #[test]
    fn authorities_follow_rfc_3986_grammar_for_ip_literals_and_ports() {
        let valid: &[&[u8]] = &[
            b"a",
            b"a:80",
            b"a:",
            b"a:000080",
            b"a:65535",
            b"%41b.example",
            b"[::]",
            b"[::1]:443",
            b"[1:2:3:4:5:6:7:8]",
            b"[1:2:3:4:5:6:7::]",
            b"[1::2:3:4:5:6:7]",
            b"[::ffff:192.0.2.1]",
            b"[1:2:3:4:5:6:1.2.3.4]",
            b"[FE80::ABCD]",
            b"[v1.a]",
            b"[V1F.a:b!$&'()*+,;=-._~]",
        ];
        let invalid: &[&[u8]] = &[
            b"a:65536",
            b"a:99999999999999999999999",
            b"a:8o",
            b"[]",
            b"[zz]",
            b"[.]",
            b"[-]",
            b"[v]",
            b"[v1]",
            b"[v.a]",
            b"[v1.]",
            b"[vg.a]",
            b"[v1.a/b]",
            b"[:::::]",
            b"[1:2:3:4:5:6:7:8:9]",
            b"[1:2:3:4:5:6:7:8::]",
            b"[1::2::3]",
            b"[12345::]",
            b"[1:2:3:4:5:6:7]",
            b"[::1.2.3]",
            b"[::01.2.3.4]",
            b"[fe80::1%25eth0]",
            b"[::1]x",
            b"[::1]:x",
            b"[\xff::]",
        ];
        for &authority in valid {
            let shown = String::from_utf8_lossy(authority);
            assert!(
                is_valid_authority(authority, true, false),
                "{shown} refused"
            );
        }
        for &authority in invalid {
            let shown = String::from_utf8_lossy(authority);
            assert!(
                !is_valid_authority(authority, true, false),
                "{shown} accepted"
            );
        }
    }

    #[test]
    fn gzip_then_chunked_is_accepted_with_parameters_checked() {
        let request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;level=\"1,\\\"2\" , chunked\r\n\r\n";
        assert_eq!(error_of(request), RequestError::UnsupportedTransferCoding);
    }

    #[test]
    fn head_requests_are_recognised_from_their_first_bytes() {
        for (input, expected) in [
            (&b"HEAD /health HTTP/1.1\r\n"[..], true),
            (b"\r\n\r\nHEAD / HTTP/2.0\r\n", true),
            (b"HEAD ", true),
            (b"HEAD", false),
            (b"HEADER / HTTP/1.1", false),
            (b"head / HTTP/1.1", false),
            (b"GET / HTTP/1.1", false),
            (b"\nHEAD / HTTP/1.1", false),
            (b"", false),
        ] {
            assert_eq!(
                is_head_request(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn statuses_and_reasons() {
        use RequestError as E;
        let cases = [
            (E::BadRequestLine, 400),
            (E::BareLineFeed, 400),
            (E::BadChunkSize, 400),
            (E::UnsupportedVersion, 505),
            (E::RequestLineTooLong, 414),
            (E::MethodTooLong, 501),
            (E::HeaderSectionTooLarge, 431),
            (E::TooManyHeaderFields, 431),
            (E::TrailerTooLarge, 431),
            (E::UnsupportedTransferCoding, 501),
            (E::BodyTooLarge, 413),
            (E::ExpectationFailed, 417),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error:?}");
        }
        assert_eq!(E::BareLineFeed.reason(), "bare line feed");
        assert_eq!(E::MissingHost.to_string(), "missing host header");
        for error in [
            E::BadTarget,
            E::ObsoleteLineFolding,
            E::RepeatedChunked,
            E::BadTrailer,
        ] {
            let reason = error.reason();
            assert!(
                !reason.is_empty() && reason == reason.to_lowercase(),
                "{reason}"
            );
        }
    }

    const VALID_REQUESTS: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n\r\nGET /x?y=1 HTTP/1.0\r\n\r\n",
        b"POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Length: 12\r\nX-Empty:\r\nX-Spaces:  a b  \r\n\r\n",
        b"PUT http://example.com:80/a?b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ];

    #[test]
    fn every_strict_prefix_is_partial() {
        for request in VALID_REQUESTS {
            for length in 0..request.len() {
                assert!(
                    matches!(parse_request(&request[..length]), Ok(Parsed::Partial)),
                    "prefix {:?}",
                    String::from_utf8_lossy(&request[..length])
                );
            }
            assert_eq!(complete(request).head_length, request.len());
            let mut with_body = request.to_vec();
            with_body.extend_from_slice(b"hello world!GET / HTTP/1.1\r\n");
            assert_eq!(complete(&with_body).head_length, request.len());
        }
    }

    #[test]
    fn invalid_prefixes_fail_at_once() {
        let cases: &[&[u8]] = &[
            b"GET\x00",
            b" ",
            b"\n",
            b"\r\r",
            b"GET /\x00",
            b"GET / HTTP/1.1\n",
            b"GET / HTTP/1.1\r\r",
            b"GET / HTTX",
            b"GET / HTTP/1.1\r\nHost: a\x00",
            b"GET / HTTP/1.1\r\nHost : ",
            b"GET / HTTP/1.1\r\nHost: a\r\n ",
            b"GET / HTTP/1.1\r\nHost: a\n",
            b"GET / HTTP/1.1\r\n\r\r",
        ];
        for &prefix in cases {
            assert!(
                parse_request(prefix).is_err(),
                "{:?}",
                String::from_utf8_lossy(prefix)
            );
        }
    }

    #[test]
    fn leading_empty_lines_limit() {
        let mut request = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES);
        request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(complete(&request).head_length, request.len());
        let mut request = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        assert_eq!(error_of(&request), RequestError::BadRequestLine);
        request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(error_of(&request), RequestError::BadRequestLine);
    }

    /// A request line of exactly `length` bytes (without CRLF).
    fn request_line_of(length: usize) -> Vec<u8> {
        let fixed = "GET / HTTP/1.1".len();
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', length - fixed));
        line.extend_from_slice(b" HTTP/1.1");
        assert_eq!(line.len(), length);
        line
    }

    #[test]
    fn request_line_limit() {
        let mut at_limit = request_line_of(MAX_REQUEST_LINE);
        at_limit.extend_from_slice(b"\r\nHost: a\r\n\r\n");
        assert_eq!(complete(&at_limit).target.len(), MAX_REQUEST_LINE - 13);
        let mut over = request_line_of(MAX_REQUEST_LINE + 1);
        over.extend_from_slice(b"\r\nHost: a\r\n\r\n");
        assert_eq!(error_of(&over), RequestError::RequestLineTooLong);
        assert_eq!(RequestError::RequestLineTooLong.status(), 414);

        // While arriving: the limit in bytes without a CRLF is still possible, one more is not.
        let mut whole_line = request_line_of(MAX_REQUEST_LINE);
        assert_eq!(
            parse_request(&whole_line)
                .ok()
                .map(|p| matches!(p, Parsed::Partial)),
            Some(true)
        );
        whole_line.push(b'\r');
        assert_eq!(
            parse_request(&whole_line)
                .ok()
                .map(|p| matches!(p, Parsed::Partial)),
            Some(true)
        );
        let mut partial = b"GET /".to_vec();
        partial.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(
            parse_request(&partial)
                .ok()
                .map(|p| matches!(p, Parsed::Partial)),
            Some(true)
        );
        partial.push(b'a');
        assert_eq!(error_of(&partial), RequestError::RequestLineTooLong);
        // A method that alone passes the limit, arriving or complete, is one not implemented.
        let mut long_method = vec![b'M'; MAX_REQUEST_LINE + 1];
        assert_eq!(error_of(&long_method), RequestError::MethodTooLong);
        long_method.extend_from_slice(b" /health HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(error_of(&long_method), RequestError::MethodTooLong);
        // A method that stays within the limit leaves an overlong line to its target: 414.
        let mut long_method_and_target = vec![b'M'; MAX_REQUEST_LINE - 1];
        long_method_and_target.extend_from_slice(b" /health HTTP/1.1\r\n\r\n");
        assert_eq!(
            error_of(&long_method_and_target),
            RequestError::RequestLineTooLong
        );
        // Leading empty lines do not count towards the line.
        let mut with_empty_lines = b"\r\n\r\n".to_vec();
        with_empty_lines.extend_from_slice(&at_limit);
        assert_eq!(
            complete(&with_empty_lines).head_length,
            with_empty_lines.len()
        );
    }

    /// A request whose header section (field lines with their CRLFs) is exactly `size` bytes.
    fn request_with_header_section_of(size: usize) -> Vec<u8> {
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        let section_start = "GET / HTTP/1.1\r\n".len();
        let fill = size - (request.len() - section_start) - 2;
        request.extend(std::iter::repeat_n(b'v', fill));
        request.extend_from_slice(b"\r\n");
        assert_eq!(request.len() - section_start, size);
        request.extend_from_slice(b"\r\n");
        request
    }

    #[test]
    fn header_section_limit() {
        let at_limit = request_with_header_section_of(MAX_HEADER_SECTION);
        assert_eq!(complete(&at_limit).head_length, at_limit.len());
        // Every prefix of the request at the limit is still Partial.
        for cut in [
            at_limit.len() - 1,
            at_limit.len() - 2,
            at_limit.len() - 3,
            at_limit.len() / 2,
        ] {
            assert_eq!(
                parse_request(&at_limit[..cut])
                    .ok()
                    .map(|p| matches!(p, Parsed::Partial)),
                Some(true),
                "{cut}"
            );
        }
        let over = request_with_header_section_of(MAX_HEADER_SECTION + 1);
        assert_eq!(error_of(&over), RequestError::HeaderSectionTooLarge);
        // Detected before the blank line arrives.
        assert_eq!(
            error_of(&over[..over.len() - 3]),
            RequestError::HeaderSectionTooLarge
        );
        assert_eq!(RequestError::HeaderSectionTooLarge.status(), 431);
    }

    #[test]
    fn header_field_count_limit() {
        let build = |count: usize| {
            let mut request = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
            for index in 1..count {
                request.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
            }
            request.extend_from_slice(b"\r\n");
            request
        };
        let at_limit = build(MAX_HEADER_FIELDS);
        assert_eq!(complete(&at_limit).fields.len(), MAX_HEADER_FIELDS);
        let over = build(MAX_HEADER_FIELDS + 1);
        assert_eq!(error_of(&over), RequestError::TooManyHeaderFields);
        // As soon as the extra field begins.
        let mut prefix = at_limit[..at_limit.len() - 2].to_vec();
        assert_eq!(
            parse_request(&prefix)
                .ok()
                .map(|p| matches!(p, Parsed::Partial)),
            Some(true)
        );
        prefix.push(b'Y');
        assert_eq!(error_of(&prefix), RequestError::TooManyHeaderFields);
    }

    #[test]
    fn content_length_limit() {
        let build =
            |length: u64| format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
        assert_eq!(
            complete(build(MAX_BODY).as_bytes()).body,
            BodyFraming::Length(MAX_BODY)
        );
        assert_eq!(
            error_of(build(MAX_BODY + 1).as_bytes()),
            RequestError::BodyTooLarge
        );
        assert_eq!(
            error_of(build(u64::MAX).as_bytes()),
            RequestError::BodyTooLarge
        );
    }

    #[test]
    fn the_field_table_holds_names_and_trimmed_values_in_order() {
        let section = b"A: b \r\nEmpty:\r\nBlank: \t \r\nX-Y:z\r\nPad:\t q r \t\r\n";
        let table = FieldTable::new(section);
        let pairs: Vec<(&[u8], &[u8])> = table.iter().collect();
        let expected: [(&[u8], &[u8]); 5] = [
            (b"A", b"b"),
            (b"Empty", b""),
            (b"Blank", b""),
            (b"X-Y", b"z"),
            (b"Pad", b"q r"),
        ];
        assert_eq!(pairs, expected);
        assert_eq!(table.len(), 5);
        assert_eq!(find_field(&table, "pad"), Some(&b"q r"[..]));
        assert_eq!(FieldTable::new(b"").len(), 0);
    }

    #[test]
    fn header_lookup_finds_the_first_match() {
        let head = complete(
            b"GET / HTTP/1.1\r\nX-A: one\r\nHost: h\r\nx-a:two\r\nX-B:\t spaced \t\r\n\r\n",
        );
        assert_eq!(head.header("x-a"), Some(&b"one"[..]));
        assert_eq!(head.header("X-b"), Some(&b"spaced"[..]));
        assert_eq!(head.header("x"), None);
        assert_eq!(head.header(""), None);
        let names: Vec<&[u8]> = head.fields.iter().map(|(name, _)| name).collect();
        assert_eq!(names, [&b"X-A"[..], b"Host", b"x-a", b"X-B"]);
    }

    // --- Chunked decoder.

    /// Stands for "needs more bytes" in the helpers below; the decoder never reports it.
    const UNFINISHED: RequestError = RequestError::MissingHost;

    fn decode_all(input: &[u8], max_body: u64) -> Result<(Vec<u8>, usize), RequestError> {
        let mut decoder = ChunkedDecoder::new(max_body);
        let mut data = Vec::new();
        let progress = decoder.decode(input, Some(&mut data))?;
        if progress.finished {
            Ok((data, progress.consumed))
        } else {
            Err(UNFINISHED)
        }
    }

    /// Feeds one byte at a time, as a caller keeping unconsumed bytes would.
    fn decode_byte_by_byte(input: &[u8], max_body: u64) -> Result<(Vec<u8>, usize), RequestError> {
        let mut decoder = ChunkedDecoder::new(max_body);
        let mut data = Vec::new();
        for (index, &byte) in input.iter().enumerate() {
            let progress = decoder.decode(&[byte], Some(&mut data))?;
            assert_eq!(progress.consumed, 1);
            if progress.finished {
                return Ok((data, index + 1));
            }
        }
        Err(UNFINISHED)
    }

    #[test]
    fn good_chunked_bodies() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"A\r\n0123456789\r\n000\r\n\r\n", b"0123456789"),
            (
                b"a\r\n\r\n\r\n\r\n\r\n\r\n\r\n0\r\n\r\n",
                b"\r\n\r\n\r\n\r\n\r\n",
            ),
            (b"0000000000000003\r\nabc\r\n0\r\n\r\n", b"abc"),
            (
                b"00000000000000001\r\nx\r\n000000000000000000\r\n\r\n",
                b"x",
            ),
            (b"3;name\r\nabc\r\n0;last\r\n\r\n", b"abc"),
            (b"3 ;name=value\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3\t; a = b ; c=\"q \\\" ;\"\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3;a;b=c;d=\"\"\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3;a=\"x\" ;b\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3\r\nabc\r\n0\r\nExpires: never\r\nX-Sum:\r\n\r\n", b"abc"),
            (
                b"3\r\n\x00\xff\n\r\n0\r\nX: \x80 v\t\r\n\r\n",
                b"\x00\xff\n",
            ),
        ];
        for &(body, expected) in cases {
            let shown = String::from_utf8_lossy(body);
            let mut with_next = body.to_vec();
            with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let whole = decode_all(&with_next, MAX_BODY);
            assert_eq!(whole, Ok((expected.to_vec(), body.len())), "{shown:?}");
            assert_eq!(decode_byte_by_byte(body, MAX_BODY), whole, "{shown:?}");
        }
    }

    #[test]
    fn bad_chunked_bodies() {
        use RequestError as E;
        let cases: &[(&[u8], RequestError)] = &[
            (b"\r\n", E::BadChunkSize),
            (b"x\r\n", E::BadChunkSize),
            (b"-1\r\n", E::BadChunkSize),
            (b"+1\r\n", E::BadChunkSize),
            (b" 1\r\n", E::BadChunkSize),
            (b"0x1\r\n", E::BadChunkSize),
            (b"1 \r\na\r\n", E::BadChunkSize),
            (b"1\t\r\na\r\n", E::BadChunkSize),
            (b"1 x\r\n", E::BadChunkSize),
            (b"ffffffffffffffffff\r\n", E::BadChunkSize),
            (b"10000000000000000\r\n", E::BadChunkSize),
            (b"000000000000000010000000000000000\r\n", E::BadChunkSize),
            (b"1\na\r\n", E::BareLineFeed),
            (b"\n", E::BareLineFeed),
            (b"1\rxa\r\n", E::BareCarriageReturn),
            (b"1;\r\na\r\n", E::BadChunkExtension),
            (b"1;=v\r\na\r\n", E::BadChunkExtension),
            (b"1;a=\r\na\r\n", E::BadChunkExtension),
            (b"1;a \r\na\r\n", E::BadChunkExtension),
            (b"1;a=b \r\na\r\n", E::BadChunkExtension),
            (b"1;a=\"b\" \r\na\r\n", E::BadChunkExtension),
            (b"1;a=\"b\r\na\r\n", E::BadChunkExtension),
            (b"1;a=\"\x01\"\r\n", E::BadChunkExtension),
            (b"1;a=b\"\r\n", E::BadChunkExtension),
            (b"1;a\nb\r\n", E::BareLineFeed),
            (b"1;a=b c\r\n", E::BadChunkExtension),
            (b"1;a@b\r\n", E::BadChunkExtension),
            (b"3\r\nabcd\r\n0\r\n\r\n", E::MissingChunkTerminator),
            (b"3\r\nabc0\r\n\r\n", E::MissingChunkTerminator),
            (b"3\r\nabc\n0\r\n\r\n", E::MissingChunkTerminator),
            (b"3\r\nabc\rx", E::MissingChunkTerminator),
            (b"0\r\nX : v\r\n\r\n", E::BadTrailer),
            (b"0\r\n X: v\r\n\r\n", E::BadTrailer),
            (b"0\r\nX: v\r\n folded\r\n\r\n", E::BadTrailer),
            (b"0\r\n: v\r\n\r\n", E::BadTrailer),
            (b"0\r\nX: a\x00\r\n\r\n", E::BadTrailer),
            (b"0\r\nX\r\n\r\n", E::BadTrailer),
            (b"0\r\nX: v\n\r\n", E::BareLineFeed),
            (b"0\r\n\n", E::BareLineFeed),
            (b"0\r\nX: v\rY\r\n\r\n", E::BareCarriageReturn),
            (b"0\r\n\rX", E::BareCarriageReturn),
        ];
        for &(body, expected) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(decode_all(body, MAX_BODY), Err(expected), "{shown:?}");
            assert_eq!(
                decode_byte_by_byte(body, MAX_BODY),
                Err(expected),
                "{shown:?}"
            );
        }
        // Overflow is refused even with no body limit at all.
        assert_eq!(
            decode_all(b"ffffffffffffffffff\r\n", u64::MAX),
            Err(E::BadChunkSize)
        );
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\n", u64::MAX).err(),
            Some(UNFINISHED),
            "sixteen digits fit and then wait for data"
        );
    }

    #[test]
    fn chunked_body_limit() {
        let limit = 10;
        let at_limit = b"4\r\nabcd\r\n6\r\nefghij\r\n0\r\n\r\n";
        assert_eq!(
            decode_all(at_limit, limit).map(|(data, _)| data.len()),
            Ok(10)
        );
        let over = b"4\r\nabcd\r\n7\r\nefghijk\r\n0\r\n\r\n";
        assert_eq!(decode_all(over, limit), Err(RequestError::BodyTooLarge));
        assert_eq!(
            decode_byte_by_byte(over, limit),
            Err(RequestError::BodyTooLarge)
        );
        // Refused when the size arrives, before any of its data.
        let mut decoder = ChunkedDecoder::new(limit);
        assert_eq!(
            decoder.decode(b"4\r\nabcd\r\n7", None).map(|p| p.consumed),
            Ok(10)
        );
        assert_eq!(decoder.decode(b";", None), Err(RequestError::BodyTooLarge));
        // A failed decoder stays failed.
        assert_eq!(
            decoder.decode(b"\r\n", None),
            Err(RequestError::BodyTooLarge)
        );
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\n", MAX_BODY),
            Err(RequestError::BodyTooLarge)
        );
    }

    #[test]
    fn chunk_line_limit() {
        let build = |line_length: usize| {
            let mut body = b"1;x=".to_vec();
            body.resize(line_length, b'v');
            body.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
            body
        };
        assert_eq!(
            decode_all(&build(MAX_CHUNK_LINE), MAX_BODY).map(|(data, _)| data),
            Ok(b"a".to_vec())
        );
        assert_eq!(
            decode_all(&build(MAX_CHUNK_LINE + 1), MAX_BODY),
            Err(RequestError::ChunkLineTooLong)
        );
    }

    #[test]
    fn trailer_limits() {
        // A trailer section (field lines with their CRLFs) of exactly `size` bytes.
        let by_size = |size: usize| {
            let mut body = b"0\r\nX: ".to_vec();
            body.resize(3 + size - 2, b'v');
            body.extend_from_slice(b"\r\n\r\n");
            body
        };
        assert!(decode_all(&by_size(MAX_HEADER_SECTION), MAX_BODY).is_ok());
        assert_eq!(
            decode_all(&by_size(MAX_HEADER_SECTION + 1), MAX_BODY),
            Err(RequestError::TrailerTooLarge)
        );
        let by_count = |count: usize| {
            let mut body = b"0\r\n".to_vec();
            for _ in 0..count {
                body.extend_from_slice(b"T: v\r\n");
            }
            body.extend_from_slice(b"\r\n");
            body
        };
        assert!(decode_all(&by_count(MAX_HEADER_FIELDS), MAX_BODY).is_ok());
        assert_eq!(
            decode_all(&by_count(MAX_HEADER_FIELDS + 1), MAX_BODY),
            Err(RequestError::TrailerTooLarge)
        );
    }

    #[test]
    fn chunked_decoder_handles_any_split() {
        let body =
            b"5;e=\"x\"\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: v\r\n\r\nNEXT";
        let expected = b"helloabcdefghijklmnopqrstuvwxyz".to_vec();
        let chunked_length = body.len() - 4;
        for split in 0..chunked_length {
            let mut decoder = ChunkedDecoder::new(MAX_BODY);
            let mut data = Vec::new();
            let first = decoder
                .decode(&body[..split], Some(&mut data))
                .expect("first part");
            assert_eq!(first.consumed, split, "a decoder keeps nothing back");
            assert!(!first.finished);
            let second = decoder
                .decode(&body[split..], Some(&mut data))
                .expect("second part");
            assert!(second.finished);
            assert_eq!(split + second.consumed, body.len() - 4);
            assert_eq!(data, expected);
            // Once finished, nothing more is taken.
            assert_eq!(
                decoder.decode(b"more", None),
                Ok(ChunkProgress {
                    consumed: 0,
                    finished: true
                })
            );
        }
        let mut discarding = ChunkedDecoder::new(MAX_BODY);
        assert_eq!(
            discarding.decode(body, None).map(|p| p.consumed),
            Ok(body.len() - 4)
        );
    }

    // --- Writers.

    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    #[test]
    fn writes_a_response() {
        let mut out = b"previous".to_vec();
        let response = Response {
            status: 200,
            content_type: "application/json",
            extra_headers: &[("Allow", "GET, HEAD"), ("X-Id", "7")],
            body: b"{\"balance\":1}",
            keep_alive: true,
            request_minor_version: 1,
            head_only: false,
        };
        write_response(&mut out, &response, DATE);
        let expected = format!(
            "previousHTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: {SERVER_NAME}\r\n\
             Content-Type: application/json\r\nContent-Length: 13\r\nAllow: GET, HEAD\r\nX-Id: 7\r\n\r\n{{\"balance\":1}}"
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);

        let mut out = Vec::new();
        let closing_head = Response {
            status: 403,
            keep_alive: false,
            request_minor_version: 1,
            head_only: true,
            extra_headers: &[],
            ..response
        };
        write_response(&mut out, &closing_head, DATE);
        let expected = format!(
            "HTTP/1.1 403 Forbidden\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: {SERVER_NAME}\r\n\
             Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);

        let mut out = Vec::new();
        let no_content = Response {
            status: 204,
            content_type: "",
            body: b"ignored",
            ..closing_head
        };
        write_response(&mut out, &no_content, DATE);
        let expected = format!(
            "HTTP/1.1 204 No Content\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: {SERVER_NAME}\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(String::from_utf8_lossy(&out), expected);

        let mut out = Vec::new();
        let empty = Response {
            status: 500,
            body: b"",
            keep_alive: true,
            request_minor_version: 1,
            head_only: false,
            content_type: "text/plain",
            ..response
        };
        write_response(&mut out, &empty, DATE);
        assert!(out.ends_with(b"Content-Length: 0\r\nAllow: GET, HEAD\r\nX-Id: 7\r\n\r\n"));
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
    }

    #[test]
    fn a_body_written_in_place_gives_the_same_response() {
        let base = Response {
            status: 200,
            content_type: "text/html",
            extra_headers: &[("X-Id", "7")],
            body: b"",
            keep_alive: true,
            request_minor_version: 1,
            head_only: false,
        };
        let cases = [
            (base, &b"<p>page</p>"[..]),
            (base, b""),
            (
                Response {
                    head_only: true,
                    ..base
                },
                b"not sent",
            ),
            (
                Response {
                    status: 204,
                    ..base
                },
                b"ignored",
            ),
            (
                Response {
                    keep_alive: false,
                    request_minor_version: 0,
                    ..base
                },
                &[b'z'; 3000][..],
            ),
        ];
        for (response, body) in cases {
            let mut expected = b"earlier".to_vec();
            write_response(&mut expected, &Response { body, ..response }, DATE);
            let mut out = b"earlier".to_vec();
            let body_start = out.len();
            out.extend_from_slice(body);
            write_response_around_body(&mut out, body_start, &response, DATE);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn written_responses_parse_back() {
        for (status, body, keep_alive) in [
            (200, &b"x"[..], true),
            (500, b"", false),
            (404, &[b'z'; 1000][..], true),
        ] {
            let mut out = Vec::new();
            let response = Response {
                status,
                content_type: "text/plain",
                extra_headers: &[],
                body,
                keep_alive,
                request_minor_version: 1,
                head_only: false,
            };
            write_response(&mut out, &response, DATE);
            let Ok(Parsed::Complete(head)) = parse_response(&out, false) else {
                panic!("{out:?}")
            };
            assert_eq!(head.status, status);
            assert_eq!(head.body, ResponseFraming::Length(body.len() as u64));
            assert_eq!(head.keep_alive, keep_alive);
            assert_eq!(&out[head.head_length..], body);
        }
    }

    #[test]
    fn writes_streaming_heads_and_chunks() {
        let prefix = format!("HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: {SERVER_NAME}\r\nContent-Type: text/plain\r\n");
        let cases = [
            (true, true, "Transfer-Encoding: chunked\r\n\r\n"),
            (
                true,
                false,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            ),
            (false, true, "Connection: keep-alive\r\n\r\n"),
            (false, false, "Connection: close\r\n\r\n"),
        ];
        for (chunked, keep_alive, rest) in cases {
            let mut out = Vec::new();
            write_streaming_head(&mut out, 200, "text/plain", &[], chunked, keep_alive, DATE);
            assert_eq!(String::from_utf8_lossy(&out), format!("{prefix}{rest}"));
        }
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello");
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[b'x'; 26]);
        write_chunk(&mut out, &[b'y'; 4096]);
        write_last_chunk(&mut out);
        let mut expected = b"5\r\nhello\r\n1a\r\nxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n1000\r\n".to_vec();
        expected.extend_from_slice(&[b'y'; 4096]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        let (data, consumed) = decode_all(&out, MAX_BODY).expect("our own chunks decode");
        assert_eq!((data.len(), consumed), (5 + 26 + 4096, out.len()));
    }

    #[test]
    fn number_writers() {
        for (value, decimal, hex) in [
            (0u64, "0", "0"),
            (9, "9", "9"),
            (10, "10", "a"),
            (255, "255", "ff"),
            (u64::MAX, "18446744073709551615", "ffffffffffffffff"),
        ] {
            let mut out = Vec::new();
            write_decimal(&mut out, value);
            assert_eq!(out, decimal.as_bytes());
            out.clear();
            write_hex(&mut out, value);
            assert_eq!(out, hex.as_bytes());
        }
    }

    #[test]
    fn reason_phrases() {
        let cases = [
            (100, "Continue"),
            (200, "OK"),
            (204, "No Content"),
            (304, "Not Modified"),
            (403, "Forbidden"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (505, "HTTP Version Not Supported"),
            (306, ""),
            (599, ""),
            (0, ""),
        ];
        for (status, phrase) in cases {
            assert_eq!(reason_phrase(status), phrase, "{status}");
        }
        for status in 100..600 {
            assert!(reason_phrase(status)
                .bytes()
                .all(|byte| byte == b' ' || byte.is_ascii_graphic()));
        }
    }

    // --- Response parser.

    fn response(buf: &[u8], request_was_head: bool) -> ResponseHead<'_> {
        match parse_response(buf, request_was_head) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!(
                "expected a response for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn good_responses() {
        use ResponseFraming as F;
        // (response, request was HEAD, minor, status, reason, framing, keep-alive)
        type Case = (
            &'static [u8],
            bool,
            u8,
            u16,
            &'static str,
            ResponseFraming,
            bool,
        );
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, 1, 200, "OK", F::Length(5), true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 1, 200, "OK", F::None, true),
            (b"HTTP/1.1 200 \r\nContent-Length: 5, 5\r\n\r\n", false, 1, 200, "", F::Length(5), true),
            (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, 1, 200, "", F::Length(0), true),
            (b"HTTP/1.1 500 Internal  Server\tError \r\nConnection: close\r\nContent-Length: 2\r\n\r\n", false, 1, 500, "Internal  Server\tError ", F::Length(2), false),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 1, 200, "OK", F::Chunked, true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, 1, 200, "OK", F::Chunked, true),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, 1, 200, "OK", F::UntilClose, false),
            (b"HTTP/1.1 200 OK\r\n\r\n", false, 1, 200, "OK", F::UntilClose, false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, 0, 200, "OK", F::Length(1), false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", false, 0, 200, "OK", F::Length(1), true),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, 200, "OK", F::UntilClose, false),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", false, 1, 204, "No Content", F::None, true),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, 1, 304, "Not Modified", F::None, true),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, 1, 100, "Continue", F::None, true),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: bogus\r\n\r\n", true, 1, 404, "Not Found", F::None, true),
            (b"HTTP/1.2 200 OK\r\nContent-Length: 1\r\n\r\n", false, 1, 200, "OK", F::Length(1), true),
            (b"HTTP/1.1 299 \x80\xff\r\nContent-Length: 1\r\n\r\n", false, 1, 299, "", F::Length(1), true),
        ];
        for &(buf, was_head, _minor, status, _reason, framing, keep_alive) in cases {
            let shown = String::from_utf8_lossy(buf);
            let head = response(buf, was_head);
            assert_eq!(head.status, status, "{shown}");
            assert_eq!(head.body, framing, "{shown}");
            assert_eq!(head.keep_alive, keep_alive, "{shown}");
            assert_eq!(head.head_length, buf.len(), "{shown}");
            for length in 0..buf.len() {
                assert_eq!(
                    parse_response(&buf[..length], was_head).map(|p| matches!(p, Parsed::Partial)),
                    Ok(true),
                    "{shown} at {length}"
                );
            }
        }
        let head = response(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: 42 \r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(head.header("x-request-id"), Some(&b"42"[..]));
        assert_eq!(head.fields.len(), 2);
    }

    #[test]
    fn bad_responses() {
        use ResponseError as E;
        let cases: &[(&[u8], ResponseError)] = &[
            (
                b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
                E::MalformedStatusLine,
            ),
            (b"HTTP/1.1 200 OK\rX\r\n\r\n", E::MalformedStatusLine),
            (b"HTTP/1.1  200 OK\r\n\r\n", E::BadStatusCode),
            (b"HTTP/1.1 200OK\r\n\r\n", E::MalformedStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", E::MalformedStatusLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", E::BadStatusCode),
            (b"HTTP/1.1 200 O\x00K\r\n\r\n", E::MalformedStatusLine),
            (b"http/1.1 200 OK\r\n\r\n", E::MalformedStatusLine),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", E::MalformedStatusLine),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", E::BadStatusCode),
            (b"HTTP/1.1 099 OK\r\n\r\n", E::BadStatusCode),
            (b"HTTP/2.0 200 OK\r\n\r\n", E::UnsupportedVersion),
            (b"HTTP/2 200 OK\r\n\r\n", E::UnsupportedVersion),
            // Named as soon as the byte after the digit shows a version, before the line ends.
            (b"HTTP/2.0", E::UnsupportedVersion),
            (b"HTTP/3 ", E::UnsupportedVersion),
            (b"HTTP/2x", E::MalformedStatusLine),
            (b"HTTP/H.1 200 OK\r\n\r\n", E::MalformedStatusLine),
            (
                b"HTTP/1.1 2/0 :K\rContent-Length: 2\r\n\r\n",
                E::BadStatusCode,
            ),
            (b"HTTP/1.1 2\n0 OK\r\n\r\n", E::BadStatusCode),
            (b"HTTP/1.1 200 O\rK\r\n\r\n", E::MalformedStatusLine),
            (b"HTTP/1.1 20\r\n\r\n", E::MalformedStatusLine),
            (b"HTTX", E::MalformedStatusLine),
            (
                b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
                E::MalformedHeader(RequestError::WhitespaceBeforeColon),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n",
                E::MalformedHeader(RequestError::ObsoleteLineFolding),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: y\n\r\n",
                E::MalformedHeader(RequestError::BareLineFeed),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                E::ConflictingContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                E::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                E::LengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                E::RepeatedChunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x\r\n\r\n",
                E::BadTransferEncoding,
            ),
        ];
        for &(buf, expected) in cases {
            let shown = String::from_utf8_lossy(buf);
            assert_eq!(parse_response(buf, false).err(), Some(expected), "{shown}");
        }
        assert_eq!(E::MalformedStatusLine.to_string(), "malformed status line");
        assert_eq!(
            E::MalformedHeader(RequestError::BareLineFeed).to_string(),
            "malformed header field: bare line feed"
        );
    }

    #[test]
    fn response_limits() {
        let mut line = b"HTTP/1.1 200 ".to_vec();
        line.resize(MAX_STATUS_LINE, b'r');
        let mut at_limit = line.clone();
        at_limit.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(response(&at_limit, false).status, 200);
        assert_eq!(
            parse_response(&line, false)
                .ok()
                .map(|p| matches!(p, Parsed::Partial)),
            Some(true)
        );
        line.push(b'r');
        assert_eq!(
            parse_response(&line, false).err(),
            Some(ResponseError::StatusLineTooLong)
        );

        let build = |count: usize| {
            let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
            for index in 0..count {
                buf.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
            }
            buf.extend_from_slice(b"\r\n");
            buf
        };
        assert_eq!(
            response(&build(MAX_HEADER_FIELDS), false).fields.len(),
            MAX_HEADER_FIELDS
        );
        assert_eq!(
            parse_response(&build(MAX_HEADER_FIELDS + 1), false).err(),
            Some(ResponseError::TooManyHeaderFields)
        );
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(17 + MAX_HEADER_SECTION - 1, b'v');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_response(&big, false).err(),
            Some(ResponseError::HeaderSectionTooLarge)
        );
    }

    /// A fixed-seed fuzz: no input makes the parsers panic, and Partial never turns into an error
    /// for a longer valid request.
    #[test]
    fn random_mutations_never_panic() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"\r\n :;,\t\"\\/?#%0aFzGET HTTP/1.1\x00\x80chunked";
        for round in 0..20_000 {
            let base = VALID_REQUESTS[round % VALID_REQUESTS.len()];
            let mut input = base.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let position = (next() % (input.len() as u64 + 1)) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 if position < input.len() => input[position] = byte,
                    1 if position < input.len() => {
                        input.remove(position);
                    }
                    _ => input.insert(position, byte),
                }
            }
            let _ = parse_request(&input);
            let _ = parse_response(&input, false);
            let mut decoder = ChunkedDecoder::new(64);
            let _ = decoder.decode(&input, None);
        }
    }

    /// A response's error does not depend on how TCP split it: a prefix that is already an
    /// error is the same error as the whole.
    #[test]
    fn a_response_error_is_the_same_at_every_split() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bases: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.0 403 Forbidden\r\nServer: x\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        let alphabet = b"\r\n :.\t/0129HTPxz\x00\x7f\x80";
        for round in 0..20_000 {
            let mut input = bases[round % bases.len()].to_vec();
            for _ in 0..(next() % 3 + 1) {
                let position = (next() % (input.len() as u64 + 1)) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 if position < input.len() => input[position] = byte,
                    1 if position < input.len() => {
                        input.remove(position);
                    }
                    _ => input.insert(position, byte),
                }
            }
            let whole = parse_response(&input, false).err();
            for end in 0..input.len() {
                if let Err(early) = parse_response(&input[..end], false) {
                    assert_eq!(
                        Some(early),
                        whole,
                        "{:?} cut at {end}",
                        String::from_utf8_lossy(&input)
                    );
                }
            }
        }
    }
}
