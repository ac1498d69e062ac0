"""Explaining a refusal of virtnet's RelaxNG grammar in plain words.

libxml2 only says that a document is invalid, often vaguely. This module walks the
document alongside the grammar files themselves and reports the first problem: the
element, the attribute, the value and what would be accepted, on the offending
element's line, drawing on the grammar's <a:documentation> annotations.

The walk understands the RelaxNG subset virtnet's grammar uses (element,
attribute, group, interleave, choice, optional, zeroOrMore, oneOrMore, ref,
text, empty, value, data with XML Schema integer/string types, anyName/nsName).
It treats interleave and group alike (order never matters in virtnet's grammar).
"""

import functools
import re
from collections import namedtuple
from pathlib import Path

from lxml import etree

from virtnet.suggest import closest

_RNG = "{http://relaxng.org/ns/structure/1.0}"
_DOC = "{http://relaxng.org/ns/compatibility/annotations/1.0}documentation"

# Children of these elements are too many to list in a message; an unknown
# name there gets a "did you mean" instead.
_OPEN_CONTAINERS = ("domain", "devices", "network")


Problem = namedtuple("Problem", "line message")
Problem.__doc__ = "The first thing wrong with a document: its line (or None) and a plain-words message."


def first_problem(root, start):
    """The first problem of a document's root element against the grammar whose start file is
    START (virtnet/schemas/domain.rng; the files it includes are found next to it), or None."""
    return _Walker(_grammar(Path(start))).first_problem(root)


# ---------------------------------------------------------------- the grammar as data


_Attribute = namedtuple("_Attribute", "name required value doc")  # value: RNG patterns; [] = any text
_Child = namedtuple("_Child", "name required repeat patterns doc")  # patterns: RNG <element> nodes


class _Shape:
    """What one element may hold, flattened from its content pattern (one choice branch)."""

    def __init__(self, attributes=None, any_attributes=(), children=None, any_children=(),
                 values=(), free_text=False):
        self.attributes = attributes or {}
        self.any_attributes = list(any_attributes)  # name-class nodes
        self.children = children or {}
        self.any_children = list(any_children)  # <element> nodes with a name class
        self.values = list(values)  # data/value patterns for the element's text
        self.free_text = free_text

    def merged(self, other):
        shape = _Shape(
            dict(self.attributes),
            self.any_attributes + other.any_attributes,
            dict(self.children),
            self.any_children + other.any_children,
            self.values + other.values,
            self.free_text or other.free_text,
        )
        shape.attributes.update(other.attributes)
        for name, child in other.children.items():
            mine = shape.children.get(name)
            if mine is None:
                shape.children[name] = child
            else:  # the same element in two places of a group: it may repeat
                shape.children[name] = _Child(
                    name, mine.required or child.required, True,
                    mine.patterns + child.patterns, mine.doc or child.doc,
                )
        return shape


def _rng_children(node):
    return [child for child in node if isinstance(child.tag, str) and child.tag.startswith(_RNG)]


def _kind(node):
    return node.tag[len(_RNG):]


def _doc(node):
    for child in node:
        if child.tag == _DOC:
            return " ".join((child.text or "").split()) or None
    return None


def _name_class(node):
    """A pattern's name: a plain string, or an RNG name-class node."""
    if node.get("name") is not None:
        return node.get("name").strip()
    return _rng_children(node)[0]


def _content(node):
    """The pattern nodes inside an <element> or <attribute> (after any name class)."""
    children = _rng_children(node)
    if node.get("name") is None:
        children = children[1:]
    return children


def _split(qname):
    if qname.startswith("{"):
        namespace, local = qname[1:].split("}", 1)
        return namespace, local
    return "", qname


def _name_matches(name_class, qname):
    namespace, local = _split(qname)
    if isinstance(name_class, str):
        return namespace == "" and local == name_class
    kind = _kind(name_class)
    if kind == "name":
        ns = name_class.get("ns", "")
        return namespace == ns and local == (name_class.text or "").strip()
    if kind == "choice":
        return any(_name_matches(option, qname) for option in _rng_children(name_class))
    if kind in ("anyName", "nsName"):
        if kind == "nsName" and namespace != name_class.get("ns", ""):
            return False
        excluded = name_class.find(_RNG + "except")
        return excluded is None or not any(
            _name_matches(option, qname) for option in _rng_children(excluded)
        )
    return False


def _unrestricted(name_class):
    return (not isinstance(name_class, str) and _kind(name_class) == "anyName"
            and name_class.find(_RNG + "except") is None)


class _Grammar:
    """All defines of the grammar files, and the flattened shape of each element pattern."""

    def __init__(self, start: Path):
        self.defines = {}
        self.start = None
        self._shapes = {}
        self._pass_through = {}
        self._parents = None
        self._load(start)

    def _load(self, path: Path):
        root = etree.parse(str(path)).getroot()
        for node in _rng_children(root):
            kind = _kind(node)
            if kind == "include":
                self._load(path.parent / node.get("href"))
            elif kind == "define":
                self.defines[node.get("name")] = node
            elif kind == "start":
                self.start = node

    def define_pattern(self, name):
        return _rng_children(self.defines[name])

    def root(self):
        """The start pattern's element (virtnet's grammar starts with exactly one)."""
        (child,) = self._flatten_all(_rng_children(self.start), True, False)[0].children.values()
        return child

    # -- flattening: a content pattern becomes a list of alternative shapes

    def shapes(self, element_node):
        key = element_node
        if key not in self._shapes:
            self._shapes[key] = self._flatten_all(_content(element_node), True, False)
        return self._shapes[key]

    def _flatten_all(self, nodes, required, repeat):
        alternatives = [_Shape()]
        for node in nodes:
            options = self._flatten(node, required, repeat)
            alternatives = [a.merged(b) for a in alternatives for b in options]
        return alternatives

    def _flatten(self, node, required, repeat):
        kind = _kind(node)
        if kind == "element":
            name = _name_class(node)
            if isinstance(name, str):
                return [_Shape(children={name: _Child(name, required, repeat, [node], _doc(node))})]
            return [_Shape(any_children=[node])]
        if kind == "attribute":
            name = _name_class(node)
            if isinstance(name, str):
                attribute = _Attribute(name, required, _content(node), _doc(node))
                return [_Shape(attributes={name: attribute})]
            return [_Shape(any_attributes=[name])]
        if kind in ("group", "interleave"):
            return self._flatten_all(_rng_children(node), required, repeat)
        if kind == "mixed":
            return [s.merged(_Shape(free_text=True)) for s in self._flatten_all(_rng_children(node), required, repeat)]
        if kind == "optional":
            return self._flatten_all(_rng_children(node), False, repeat)
        if kind == "zeroOrMore":
            return self._flatten_all(_rng_children(node), False, True)
        if kind == "oneOrMore":
            return self._flatten_all(_rng_children(node), required, True)
        if kind == "ref":
            if self.is_value_pattern(node):  # keep the ref: its define documents the value
                return [_Shape(values=[node])]
            return self._flatten_all(self.define_pattern(node.get("name")), required, repeat)
        if kind == "choice":
            if self.is_value_pattern(node):
                return [_Shape(values=[node])]
            branches = [self._flatten(branch, required, repeat) for branch in _rng_children(node)]
            if repeat:  # (a | b)* lets a and b mix freely: one shape holding both
                union = _Shape()
                for options in branches:
                    for option in options:
                        union = union.merged(option)
                return [union]
            return [option for options in branches for option in options]
        if kind == "text":
            return [_Shape(free_text=True)]
        if kind in ("value", "data", "list"):
            return [_Shape(values=[node])]
        if kind == "notAllowed":
            return []
        return [_Shape()]  # empty

    def is_value_pattern(self, node):
        kind = _kind(node)
        if kind in ("value", "data", "text", "list"):
            return True
        if kind == "choice":
            return all(self.is_value_pattern(branch) for branch in _rng_children(node))
        if kind == "ref":
            pattern = self.define_pattern(node.get("name"))
            return len(pattern) == 1 and self.is_value_pattern(pattern[0])
        return False

    def passes_through(self, element_node, _visiting=None):
        """True for a pattern that takes any attributes, text and elements, all the way down."""
        if element_node in self._pass_through:
            return self._pass_through[element_node]
        visiting = set() if _visiting is None else _visiting
        if element_node in visiting:
            return True  # looped back to a pattern already being answered
        visiting.add(element_node)
        shapes = self.shapes(element_node)
        shape = shapes[0] if len(shapes) == 1 else None
        result = bool(
            shape is not None and shape.free_text
            and not (shape.attributes or shape.children or shape.values)
            and any(_unrestricted(name_class) for name_class in shape.any_attributes)
            and any(_unrestricted(_name_class(node)) and self.passes_through(node, visiting)
                    for node in shape.any_children)
        )
        if _visiting is None:
            self._pass_through[element_node] = result
        return result

    # -- where each element name may appear (for "it belongs inside <devices>")

    def parents_of(self, name):
        if self._parents is None:
            self._parents = {}
            pending = [node for shape in self._flatten_all(_rng_children(self.start), True, False)
                       for child in shape.children.values() for node in child.patterns]
            seen = set()
            while pending:
                node = pending.pop()
                if node in seen:
                    continue
                seen.add(node)
                parent = _name_class(node)
                for shape in self.shapes(node):
                    for child in shape.children.values():
                        self._parents.setdefault(child.name, [])
                        if parent not in self._parents[child.name]:
                            self._parents[child.name].append(parent)
                        pending.extend(child.patterns)
        return self._parents.get(name, [])


@functools.lru_cache(maxsize=None)
def _grammar(start: Path) -> _Grammar:
    return _Grammar(start)


# ---------------------------------------------------------------- values


_INTEGER_RANGES = {
    "integer": (None, None),
    "nonNegativeInteger": (0, None),
    "positiveInteger": (1, None),
    "long": (-(2**63), 2**63 - 1),
    "int": (-(2**31), 2**31 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-128, 127),
    "unsignedLong": (0, 2**64 - 1),
    "unsignedInt": (0, 2**32 - 1),
    "unsignedShort": (0, 2**16 - 1),
    "unsignedByte": (0, 255),
}


def _collapse(text):
    return " ".join(text.split())


@functools.lru_cache(maxsize=None)
def _regex(pattern):
    return re.compile(pattern)


def _params(node):
    return {param.get("name"): (param.text or "") for param in node.findall(_RNG + "param")}


def _data_matches(node, text):
    datatype = node.get("type", "")
    params = _params(node)
    if datatype in _INTEGER_RANGES:
        lexical = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,40}", lexical):  # longer: out of every range, and int() refuses 4300+
            return False
        number = int(lexical)
        low, high = _integer_bounds(datatype, params)
        if (low is not None and number < low) or (high is not None and number > high):
            return False
    elif datatype in ("string", "normalizedString", "token"):
        lexical = _collapse(text) if datatype == "token" else text
    else:
        return True  # a type this walk does not know: libxml2 has the final word
    pattern = params.get("pattern")
    if pattern is not None and not _regex(pattern).fullmatch(lexical):
        return False
    excluded = node.find(_RNG + "except")
    return excluded is None or not any(_data_matches(option, text) for option in _rng_children(excluded))


def _integer_bounds(datatype, params):
    low, high = _INTEGER_RANGES[datatype]
    if "minInclusive" in params:
        low = int(params["minInclusive"])
    if "maxInclusive" in params:
        high = int(params["maxInclusive"])
    return low, high


def _describe_data(node):
    datatype = node.get("type", "")
    params = _params(node)
    if datatype in _INTEGER_RANGES:
        low, high = _integer_bounds(datatype, params)
        if low is not None and high is not None and high < 2**31:
            return f"an integer from {low} to {high}"
        return {0: "a non-negative integer", 1: "a positive integer"}.get(low, "an integer")
    if "pattern" in params:
        return f"text matching {params['pattern']}"
    return None


class _Values:
    """Matching and describing attribute values and element text against RNG value patterns."""

    def __init__(self, grammar: _Grammar):
        self.grammar = grammar

    def matches(self, patterns, text):
        if not patterns:
            return True
        return all(self._matches(node, text) for node in patterns)

    def _matches(self, node, text):
        kind = _kind(node)
        if kind in ("text", "list"):
            return True
        if kind == "value":
            expected = node.text or ""
            if node.get("type") == "string":
                return text == expected
            return _collapse(text) == _collapse(expected)
        if kind == "data":
            return _data_matches(node, text)
        if kind == "choice":
            return any(self._matches(branch, text) for branch in _rng_children(node))
        if kind == "ref":
            return self.matches(self.grammar.define_pattern(node.get("name")), text)
        if kind == "empty":
            return text.strip() == ""
        return True

    def describe(self, patterns):
        """(accepted values or None, a phrase such as 'a positive integer' or None)."""
        accepted, phrases = [], []
        for node in patterns:
            self._describe(node, accepted, phrases)
        return (accepted or None), (phrases[0] if phrases else None)

    def _describe(self, node, accepted, phrases):
        kind = _kind(node)
        if kind == "value":
            if node.text not in accepted:
                accepted.append(node.text or "")
        elif kind == "choice":
            for branch in _rng_children(node):
                self._describe(branch, accepted, phrases)
        elif kind == "ref":
            define = self.grammar.defines[node.get("name")]
            doc = _doc(define)
            if doc:
                phrases.append(doc)
            else:
                for inner in _rng_children(define):
                    self._describe(inner, accepted, phrases)
        elif kind == "data":
            phrase = _describe_data(node)
            if phrase:
                phrases.append(phrase)

    def fixed_value(self, patterns):
        """The single value an attribute must have (a choice discriminator), or None."""
        if len(patterns) == 1 and _kind(patterns[0]) == "value":
            return _collapse(patterns[0].text or "")
        return None


# ---------------------------------------------------------------- messages


def _display_name(element):
    local = etree.QName(element).localname
    return f"{element.prefix}:{local}" if element.prefix else local


def _is_container(element):
    parent = element.getparent()
    return parent is None or (element.tag == "devices" and parent.getparent() is None)


def _shorten(text, limit=40):
    text = _collapse(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Where a message names the path below the anchor. XML text can never hold NUL,
# so a user's value cannot be mistaken for it (unlike str.format braces).
_PATH = "\0"


class _Where:
    """How a message names a place: the top-level element or device, then the path below it."""

    def __init__(self, element):
        anchor, path = element, []
        while anchor.getparent() is not None and not _is_container(anchor.getparent()):
            path.append(anchor)
            anchor = anchor.getparent()
        self.anchor = anchor
        self.path = "".join(f"<{_display_name(e)}>" for e in reversed(path))

    def label(self, with_type=True):
        name = _display_name(self.anchor)
        kind = self.anchor.get("type")
        if with_type and kind is not None and self.anchor.getparent() is not None:
            return f"<{name} type='{_shorten(kind)}'>"
        return f"<{name}>"

    def say(self, at_anchor, below_anchor):
        """`at_anchor` when the problem is on the anchor itself, else `below_anchor` with _PATH filled in."""
        if self.path:
            return f"{self.label()}: {below_anchor.replace(_PATH, self.path)}"
        return f"{self.label()}: {at_anchor}"


def _accepted_suffix(accepted, phrase):
    if accepted:
        return "; accepted: " + ", ".join(accepted)
    if phrase:
        return f"; expected {phrase}"
    return ""


# ---------------------------------------------------------------- the walk


class _Walker:
    def __init__(self, grammar: _Grammar):
        self.grammar = grammar
        self.values = _Values(grammar)

    def first_problem(self, root):
        expected = self.grammar.root()
        if root.tag != expected.name:
            found = _display_name(root)
            namespace = etree.QName(root).namespace
            if namespace and etree.QName(root).localname == expected.name:
                found += f" in the namespace '{namespace}'"
            return Problem(root.sourceline, f"the root element is <{found}>; expected <{expected.name}>")
        problems = self.check_element(root, expected.patterns)
        return problems[0] if problems else None

    def check_element(self, element, patterns):
        """Problems of `element` against any of its possible element patterns (first match wins)."""
        if any(self.grammar.passes_through(pattern) for pattern in patterns):
            return []
        best = None
        for pattern in patterns:
            problems = self.check_alternatives(element, self.grammar.shapes(pattern))
            if not problems:
                return []
            if best is None or len(problems) < len(best):
                best = problems
        return best

    def check_alternatives(self, element, shapes):
        if not shapes:
            return [Problem(element.sourceline, _Where(element).say(
                "this element is not allowed", f"{_PATH} is not allowed"))]
        results = []
        for shape in shapes:
            problems = self.check_shape(element, shape)
            if not problems:
                return []
            results.append((shape, problems))
        if len(results) == 1:
            return results[0][1]
        return self.pick_alternative(element, results)

    def pick_alternative(self, element, results):
        """Follow a discriminating attribute (type='bridge') to the branch the author meant."""
        fixed = [self.fixed_attributes(shape) for shape, _ in results]
        common = set.intersection(*(set(f) for f in fixed))
        for name in sorted(common):
            actual = element.get(name)
            matching = [
                (result, values) for result, values in zip(results, fixed)
                if (actual is None and not result[0].attributes[name].required)
                or (actual is not None and _collapse(actual) == values[name])
            ]
            if not matching:
                accepted = list(dict.fromkeys(values[name] for values in fixed))
                return [self.unsupported_choice(element, name, actual, accepted)]
            results = [result for result, _ in matching]
            fixed = [values for _, values in matching]
        return min(results, key=lambda result: len(result[1]))[1]

    def fixed_attributes(self, shape):
        """Attributes this branch requires to have one exact value: {name: value}."""
        fixed = {}
        for name, attribute in shape.attributes.items():
            value = self.values.fixed_value(attribute.value)
            if value is not None:
                fixed[name] = value
        return fixed

    def unsupported_choice(self, element, name, actual, accepted):
        where = _Where(element)
        listing = ", ".join(accepted)
        if actual is None:
            message = where.say(f"the attribute '{name}' is missing; accepted: {listing}",
                                f"{_PATH} needs the attribute '{name}'; accepted: {listing}")
        else:
            # The anchor is named without its type here: the type is what is wrong.
            shown = f"{name} '{_shorten(actual)}' is not supported; accepted: {listing}"
            if where.path:
                message = f"{where.label()}: {where.path} {shown}"
            else:
                message = f"{where.label(with_type=False)}: {shown}"
        return Problem(element.sourceline, message)

    # -- one flat shape

    def check_shape(self, element, shape):
        problems = self.check_attributes(element, shape)
        problems += self.check_text(element, shape)
        problems += self.check_children(element, shape)
        return problems

    def check_attributes(self, element, shape):
        where = _Where(element)
        problems = []
        for qname, value in element.attrib.items():
            attribute = shape.attributes.get(qname)
            if attribute is None:
                if not any(_name_matches(name_class, qname) for name_class in shape.any_attributes):
                    problems.append(self.unexpected_attribute(element, qname, shape))
                continue
            if not self.values.matches(attribute.value, value):
                accepted, phrase = self.values.describe(attribute.value)
                shown = f"{_split(qname)[1]}='{_shorten(value)}' is not valid"
                shown += _accepted_suffix(accepted, phrase)
                problems.append(Problem(element.sourceline, where.say(shown, f"{_PATH} {shown}")))
        for attribute in shape.attributes.values():
            if attribute.required and attribute.name not in element.attrib:
                accepted, _ = self.values.describe(attribute.value)
                purpose = f" ({attribute.doc})" if attribute.doc else ""
                suffix = purpose + _accepted_suffix(accepted, None)
                problems.append(Problem(element.sourceline, where.say(
                    f"the attribute '{attribute.name}' is missing{suffix}",
                    f"{_PATH} needs the attribute '{attribute.name}'{suffix}")))
        return problems

    def unexpected_attribute(self, element, qname, shape):
        where = _Where(element)
        allowed = ", ".join(shape.attributes)
        name = _split(qname)[1]
        tail = f"; allowed: {allowed}" if allowed else "; it takes no attributes"
        close = shape.attributes and not _split(qname)[0] and closest(name, shape.attributes)
        if close:
            tail = f" (did you mean '{close}'?){tail}"
        return Problem(element.sourceline, where.say(
            f"unexpected attribute '{name}'{tail}",
            f"unexpected attribute '{name}' on {_PATH}{tail}"))

    def check_text(self, element, shape):
        where = _Where(element)
        if shape.values:
            value = element.text or ""
            if self.values.matches(shape.values, value):
                return []
            accepted, phrase = self.values.describe(shape.values)
            shown = f"text '{_shorten(value)}' is not valid" + _accepted_suffix(accepted, phrase)
            return [Problem(element.sourceline, where.say(shown, f"{_PATH} {shown}"))]
        if shape.free_text:
            return []
        stray = self.stray_text(element)
        if stray is None:
            return []
        text, line = stray
        return [Problem(line, where.say(f"unexpected text '{_shorten(text)}'",
                                        f"unexpected text '{_shorten(text)}' in {_PATH}"))]

    @staticmethod
    def stray_text(element):
        """Non-blank text directly inside `element`, with a best estimate of its line."""
        pieces = [(element.text, element, False)] + [(child.tail, child, True) for child in element]
        for text, owner, is_tail in pieces:
            if not text or not text.strip():
                continue
            offset = len(text) - len(text.lstrip())
            if not is_tail:
                return text.strip(), element.sourceline + text[:offset].count("\n")
            following = owner.getnext()
            if following is not None and following.sourceline:
                return text.strip(), following.sourceline - text[offset:].count("\n")
            return text.strip(), (owner.sourceline or element.sourceline) + text[:offset].count("\n")
        return None

    def check_children(self, element, shape):
        where = _Where(element)
        problems, seen = [], {}
        for child in element:
            if not isinstance(child.tag, str):
                continue  # comments and processing instructions
            spec = shape.children.get(child.tag)
            if spec is None:
                wild = [node for node in shape.any_children if _name_matches(_name_class(node), child.tag)]
                if wild:
                    problems += self.check_element(child, wild)
                else:
                    problems.append(self.unexpected_element(element, child, shape))
                continue
            seen[child.tag] = seen.get(child.tag, 0) + 1
            if seen[child.tag] > 1 and not spec.repeat:
                problems.append(Problem(child.sourceline, where.say(
                    f"element <{spec.name}> may appear only once",
                    f"element <{spec.name}> may appear only once in {_PATH}")))
                continue
            problems += self.check_element(child, spec.patterns)
        for spec in shape.children.values():
            if spec.required and spec.name not in seen:
                purpose = f" ({spec.doc})" if spec.doc else ""
                problems.append(Problem(element.sourceline, where.say(
                    f"the element <{spec.name}> is missing{purpose}",
                    f"{_PATH} needs the element <{spec.name}>{purpose}")))
        return problems

    def unexpected_element(self, element, child, shape):
        where = _Where(element)
        name = _display_name(child)
        allowed = list(shape.children)
        homes = [] if child.prefix else self.grammar.parents_of(child.tag)
        if homes and element.tag not in homes:  # misplaced rather than unknown
            inside = " or ".join(f"<{home}>" for home in homes[:3])
            detail = f"it belongs inside {inside}"
        elif close := not child.prefix and allowed and closest(child.tag, allowed):
            hint = f"(did you mean <{close}>?)"
            return Problem(child.sourceline, where.say(
                f"unknown element <{name}> {hint}", f"unknown element <{name}> in {_PATH} {hint}"))
        elif element.tag in _OPEN_CONTAINERS and not where.path:
            return Problem(child.sourceline, f"{where.label()}: unknown element <{name}>")
        elif allowed:
            detail = "allowed here: " + ", ".join(allowed)
        else:
            detail = "no child elements are allowed there"
        return Problem(child.sourceline, where.say(
            f"unexpected element <{name}>; {detail}",
            f"unexpected element <{name}> in {_PATH}; {detail}"))
