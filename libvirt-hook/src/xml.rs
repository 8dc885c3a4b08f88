//! A small element tree over quick-xml that remembers where every element and attribute sits
//! in the input, so `translate` can splice the document and leave every other byte alone.
//!
//! The tree keeps only what the hook needs: resolved namespaces, attributes, direct text and
//! byte spans. Comments, processing instructions and the DOCTYPE are skipped (they stay in
//! the text, since rewriting works on spans of the original). Input size, depth and element
//! count are capped, so hostile input costs bounded time and memory.

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Largest document accepted. libvirt domain XML is a few KiB; this leaves room for big
/// `<metadata>` from other tools.
pub const MAX_INPUT: usize = 4 << 20;
/// Deepest nesting accepted (libvirt's own schema goes about 8 deep).
pub const MAX_DEPTH: usize = 128;
/// Most elements accepted.
pub const MAX_ELEMENTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed domain XML at line {line}, column {column}: {message}")]
pub struct XmlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl XmlError {
    fn at(input: &str, pos: usize, message: impl Into<String>) -> XmlError {
        let (line, column) = line_col(input, pos);
        XmlError { line, column, message: message.into() }
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(s: &str, pos: usize) -> (usize, usize) {
    let pos = floor_char_boundary(s, pos.min(s.len()));
    let before = &s[..pos];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Namespace URI of a prefixed attribute; `None` for plain ones.
    pub ns: Option<String>,
    pub name: String,
    pub value: String,
    /// From the first byte of the name to just past the closing quote.
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// Namespace URI, if the element is in one.
    pub ns: Option<String>,
    /// Local name (without prefix).
    pub name: String,
    pub attrs: Vec<Attr>,
    /// From `<` of the start tag to just past `>` of the end tag (or of `<x/>`).
    pub span: Range<usize>,
    /// The start tag alone.
    pub start_tag: Range<usize>,
    /// Between the start and end tags; empty at `span.end` for `<x/>`.
    pub inner: Range<usize>,
    pub self_closing: bool,
    /// Direct character data, entities resolved.
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|a| a.ns.is_none() && a.name == name).map(|a| a.value.as_str())
    }

    pub fn attr_full(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.ns.is_none() && a.name == name)
    }

    /// First child without a namespace called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns.is_none() && c.name == name)
    }

    /// Children without a namespace called `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.ns.is_none() && c.name == name)
    }

    /// Follows a path of un-namespaced child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }

    pub fn text_trimmed(&self) -> &str {
        self.text.trim()
    }
}

/// Parses a whole document into its root element.
pub fn parse(input: &str) -> Result<Element, XmlError> {
    if input.len() > MAX_INPUT {
        return Err(XmlError::at(input, MAX_INPUT, format!("the document is larger than {} MiB", MAX_INPUT >> 20)));
    }
    let mut reader = NsReader::from_str(input);
    let cfg = reader.config_mut();
    cfg.check_end_names = true;
    cfg.trim_text(false);
    cfg.expand_empty_elements = false;

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let (ns, ev) = match reader.read_resolved_event() {
            Ok((ns, ev)) => (ns_uri(&ns), ev),
            Err(e) => {
                let pos = usize::try_from(reader.error_position()).unwrap_or(start);
                return Err(XmlError::at(input, pos, e.to_string()));
            }
        };
        let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(XmlError::at(input, start, "content after the root element"));
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::at(input, start, format!("more than {MAX_ELEMENTS} elements")));
                }
                let self_closing = matches!(ev, Event::Empty(_));
                let el = Element {
                    ns,
                    name: e.local_name().as_ref().to_owned(),
                    attrs: attrs(&reader, input, e, start)?,
                    span: start..end,
                    start_tag: start..end,
                    inner: end..end,
                    self_closing,
                    text: String::new(),
                    children: Vec::new(),
                };
                if self_closing {
                    close(&mut stack, &mut root, el);
                } else {
                    if stack.len() >= MAX_DEPTH {
                        return Err(XmlError::at(input, start, format!("elements nested deeper than {MAX_DEPTH}")));
                    }
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let Some(mut el) = stack.pop() else {
                    return Err(XmlError::at(input, start, "end tag without a start tag"));
                };
                el.inner = el.start_tag.end..start;
                el.span = el.span.start..end;
                close(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(XmlError::at(input, start, "text outside the root element")),
                }
            }
            Event::CData(c) => {
                let s: &str = &c;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(s),
                    None => return Err(XmlError::at(input, start, "CDATA outside the root element")),
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match predefined_entity(&r.xml10_content()) {
                        Some(s) => s.to_owned(),
                        None => {
                            return Err(XmlError::at(input, start, format!("unknown entity &{};", r.xml10_content())))
                        }
                    },
                    Err(e) => return Err(XmlError::at(input, start, e.to_string())),
                };
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&c),
                    None => return Err(XmlError::at(input, start, "entity outside the root element")),
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(XmlError::at(input, input.len(), format!("<{}> is not closed", open.name)));
                }
                return root.ok_or_else(|| XmlError::at(input, input.len(), "no root element"));
            }
        }
    }
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => return None,
    })
}

fn ns_uri(r: &ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.as_ref().to_owned()),
        _ => None,
    }
}

/// Offset of `part` inside `whole`, when `part` borrows from it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let base = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    let off = p.checked_sub(base)?;
    (off + part.len() <= whole.len()).then_some(off)
}

fn attrs(reader: &NsReader<&[u8]>, input: &str, e: &BytesStart<'_>, tag_start: usize) -> Result<Vec<Attr>, XmlError> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| XmlError::at(input, tag_start, err.to_string()))?;
        let key = a.key;
        // xmlns declarations are namespace plumbing, not attributes.
        if key.as_ref() == "xmlns" || key.as_ref().starts_with("xmlns:") {
            continue;
        }
        let (ns, local) = reader.resolver().resolve_attribute(key);
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| XmlError::at(input, tag_start, err.to_string()))?
            .into_owned();
        let span = match (offset_in(input, key.as_ref()), offset_in(input, &a.value)) {
            // The value is followed by its closing quote.
            (Some(k), Some(v)) => k..(v + a.value.len() + 1).min(input.len()),
            _ => tag_start..tag_start,
        };
        out.push(Attr { ns: ns_uri(&ns), name: local.as_ref().to_owned(), value, span });
    }
    Ok(out)
}

/// Escapes text for an attribute value in single quotes (libvirt's style).
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_elements_and_attributes() {
        let s = "<a x='1'>\n  <b y=\"two\"/>\n  <c>t&amp;x</c>\n</a>";
        let a = parse(s).unwrap();
        assert_eq!(&s[a.span.clone()], s);
        let b = &a.children[0];
        assert_eq!(&s[b.span.clone()], "<b y=\"two\"/>");
        assert!(b.self_closing);
        assert_eq!(&s[b.attrs[0].span.clone()], "y=\"two\"");
        let c = &a.children[1];
        assert_eq!(&s[c.inner.clone()], "t&amp;x");
        assert_eq!(c.text, "t&x");
        assert_eq!(&s[a.attrs[0].span.clone()], "x='1'");
    }

    #[test]
    fn namespaces_resolve_through_ancestors() {
        let s = "<d><metadata xmlns:v='urn:v'><v:ports><v:port mac='m'/></v:ports></metadata></d>";
        let d = parse(s).unwrap();
        let ports = &d.children[0].children[0];
        assert_eq!(ports.ns.as_deref(), Some("urn:v"));
        assert_eq!(ports.name, "ports");
        assert_eq!(ports.children[0].attr("mac"), Some("m"));
    }

    #[test]
    fn errors_carry_a_position() {
        let e = parse("<a>\n<b></c></a>").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse("").is_err());
        assert!(parse("<a/><b/>").is_err());
        assert!(parse("<a>&bogus;</a>").is_err());
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a x='1' x='2'/>").is_err());
    }

    #[test]
    fn depth_is_capped() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        parse(&ok).unwrap();
    }
}
