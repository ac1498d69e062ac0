"""Declarative XML-backed model objects.

A model object wraps one lxml element and declares its properties once, as paths relative to that
element (the way virt-manager's XMLProperty does). Reading and writing go through the tree, so
everything virtnet does not model stays where it was, untouched.

Path syntax: 'child/grandchild/@attr' for an attribute, 'child/grandchild' for element text,
'@attr' for an attribute of the wrapped element itself.
"""

from lxml import etree


def _split(path):
    parts = path.split("/")
    if parts[-1].startswith("@"):
        return parts[:-1], parts[-1][1:]
    return parts, None


class Prop:
    """One attribute or text value. `kind` converts on read (int, or a function)."""

    def __init__(self, path, kind=str):
        self.path = path
        self.kind = kind
        self.elements, self.attr = _split(path)

    def __set_name__(self, owner, name):
        self.name = name
        owner._props = {**getattr(owner, "_props", {}), name: self}

    def find(self, node):
        for tag in self.elements:
            node = node.find(tag)
            if node is None:
                return None
        return node

    def raw(self, obj):
        node = self.find(obj.node)
        if node is None:
            return None
        return node.get(self.attr) if self.attr else node.text

    def __get__(self, obj, owner=None):
        # The hottest path of every verb: kept flat (no calls to find/raw).
        if obj is None:
            return self
        node = obj.node
        for tag in self.elements:
            node = node.find(tag)
            if node is None:
                return None
        value = node.get(self.attr) if self.attr else node.text
        if value is None or self.kind is str:
            return value
        return self.kind(value.strip())

    def __set__(self, obj, value):
        node = obj.node
        chain = []
        for tag in self.elements:
            child = node.find(tag)
            if child is None:
                if value is None:
                    return
                child = etree.SubElement(node, tag)
            chain.append(child)
            node = child
        if self.attr:
            if value is None:
                node.attrib.pop(self.attr, None)
            else:
                node.set(self.attr, str(value))
        else:
            node.text = None if value is None else str(value)
        if value is None:
            _prune(chain)


def _prune(chain):
    """Remove elements along a path that were left without attributes, text or children."""
    for elem in reversed(chain):
        if len(elem) or elem.attrib or (elem.text and elem.text.strip()):
            return
        elem.getparent().remove(elem)


class Child:
    """The first sub-element at a path, wrapped in a model class (None when absent)."""

    def __init__(self, path, cls):
        self.path = path
        self.cls = cls

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        node = obj.node.find(self.path)
        return None if node is None else self.cls(node)


class Children(Child):
    """All sub-elements at a path, each wrapped in a model class.

    With cache=True the list is built once per object: for elements that are never added or
    removed after loading (a domain's interfaces), where wrappers are read many times over."""

    def __init__(self, path, cls, cache=False):
        super().__init__(path, cls)
        self.cache = cache

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        found = [self.cls(n) for n in obj.node.findall(self.path)]
        if self.cache:
            obj.__dict__[self.name] = found  # later reads find it before this descriptor
        return found


class XMLObject:
    """Base of all model classes: wraps one element."""

    tag = None
    _props = {}

    def __init__(self, node):
        self.node = node

    @property
    def line(self):
        return self.node.sourceline

    def line_of(self, path):
        """Source line of the deepest existing element along PATH (for error messages)."""
        elements, _ = _split(path)
        node, line = self.node, self.node.sourceline
        for tag in elements:
            node = node.find(tag)
            if node is None:
                break
            line = node.sourceline or line
        return line

    def has(self, path):
        return self.node.find(path) is not None

    def __eq__(self, other):
        return type(self) is type(other) and self.node is other.node

    def __hash__(self):
        return id(self.node)

    @classmethod
    def declared_props(cls):
        """Every Prop declared on this class (and its bases), by name."""
        return dict(cls._props)
