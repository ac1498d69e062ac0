"""Declarative XML-backed model objects.

A model object wraps one lxml element and declares its properties once, as paths relative to that
element (the way virt-manager's XMLProperty does). Reading and writing go through the tree, so
everything virtnet does not model stays where it was, untouched.

Path syntax: 'child/grandchild/@attr' for an attribute, 'child/grandchild' for element text,
'@attr' for an attribute of the wrapped element itself.

Reading through the tree costs an lxml look-up per path step at every read. Once a document stops
changing, `freeze(domain)` turns its model objects read-once: the first read of anything below an
object's element finds, in one walk of its subtree, the first element at every path its class
names (its own attributes need no walk), and each property, sub-object, list and derived
(`@property`) value is computed at its first read and then served as a plain attribute. While
frozen:

- the tree must not be edited except through the frozen model objects; writing a modelled
  attribute through any of them thaws the whole document first (every memo is dropped), so a
  read never returns a stale value;
- a `@property` of a model class is computed once per object, so it must derive only from the
  tree and constants (values that are lists, dicts or sets are recomputed at every read);
- plain Python attributes (not declared on the class as Prop/Child/Children/property) can be
  set freely; they never thaw anything.

`thaw(domain)` ends it explicitly, e.g. before editing the tree directly (`obj.node`).
"""

import functools
import re
from _weakref import ref as weak_ref  # weakref.ref itself, without importing weakref's module (~0.5 ms)

from lxml import etree


def yes(value):
    """A Prop kind for libvirt's yes/no attributes: True only for 'yes'."""
    return value == "yes"


def _split(path):
    parts = path.split("/")
    if parts[-1].startswith("@"):
        return parts[:-1], parts[-1][1:]
    return parts, None


_NAME = r"[A-Za-z_][\w.-]*"
_PLAIN_NAME = re.compile(_NAME)
# One step of a sub-object path: a name, or a Clark name ('{uri}name', whose URI holds slashes).
_STEP = re.compile(r"\{[^}]*\}[^/]*|[^/]+")
# A step walked without ElementPath: a name, namespaced or not (no wildcard: '{*}' is ElementPath's).
_PLAIN_STEP = re.compile(r"(\{[^{}*]+\})?" + _NAME)


class Prop:
    """One attribute or text value. `kind` converts on read (int, or a function); `default` is what
    reading an absent value gives (a rule of the format, e.g. a missing interface type is 'user')."""

    def __init__(self, path, kind=str, default=None):
        self.path = path
        self.kind = kind
        self.default = default
        self.elements, self.attr = _split(path)
        for name in self.elements + [self.attr or "x"]:
            if not _PLAIN_NAME.fullmatch(name):
                raise ValueError(f"Prop path {path!r}: '{name}' is not a plain element or attribute name")

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
        # The hottest path of every verb before freezing: kept flat (no calls to find/raw), and
        # each step is iterchildren (C) rather than find (lxml's ElementPath, in Python): half
        # the cost, with the same answer for a plain tag name (the first such child).
        if obj is None:
            return self
        node = obj.node
        for tag in self.elements:
            node = next(node.iterchildren(tag), None)
            if node is None:
                return self.default
        value = node.get(self.attr) if self.attr else node.text
        if value is None:
            return self.default
        if self.kind is str:
            return value
        return self.kind(value.strip())

    def __set__(self, obj, value):
        node = obj.node
        chain = []
        for tag in self.elements:
            child = next(node.iterchildren(tag), None)  # as find(tag), without ElementPath
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
        # A path of plain names ('source', 'devices/interface', '{uri}commandline') is walked with
        # iterchildren (C), in the same order as find/findall (lxml's ElementPath, in Python) but
        # at half the cost; anything else (predicates, wildcards) goes to ElementPath.
        # A plain path is also answered by a frozen object's snapshot, which notes the first
        # element along it (looking under the first element of each step: the grammar allows one).
        steps = _STEP.findall(path)
        plain = "/".join(steps) == path and all(_PLAIN_STEP.fullmatch(step) for step in steps)
        self.steps = steps if plain else None  # None: the path is ElementPath's
        self.tag = path if plain and len(steps) == 1 else None  # one step: a single iterchildren

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        node = self.first_element(obj.node)
        return None if node is None else self.cls(node)

    def first_element(self, node):
        if self.tag is not None:
            return next(node.iterchildren(self.tag), None)
        if self.steps is not None:
            found = _descend(node, self.steps)
            return found[0] if found else None
        return node.find(self.path)

    def elements(self, node):
        """Every element at the path, in document order."""
        if self.tag is not None:
            return list(node.iterchildren(self.tag))
        if self.steps is not None:
            return _descend(node, self.steps)
        return node.findall(self.path)


def first_children(node):
    """{tag: NODE's first child element of that tag} (what find(tag) gives), from one pass over a
    slice (no lxml iterator to set up): cheaper than a look-up per tag for a few children."""
    children = {}
    for child in node[:]:
        children.setdefault(child.tag, child)
    return children


def _descend(node, steps):
    """The elements at a path of plain names, in document order (as ElementPath's findall: step by
    step over the elements found so far). Lists rather than generators: cheaper for the one or two
    elements a step usually finds."""
    found = list(node.iterchildren(steps[0]))
    for step in steps[1:]:
        found = [child for parent in found for child in parent.iterchildren(step)]
    return found


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
        cls = self.cls
        found = [cls(n) for n in self.elements(obj.node)]
        if self.cache:
            obj.__dict__[self.name] = found  # later reads find it before this descriptor
        return found


class XMLObject:
    """Base of all model classes: wraps one element."""

    tag = None
    _props = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            # A frozen document makes its sub-objects without calling __init__ (xmlmodel._frozen_object).
            raise TypeError(f"model class {cls.__name__} defines __init__: a model object only wraps its "
                            "element; derive values with @property instead")
        if "_model" not in cls.__dict__:
            cls._model = cls  # the model class itself (a frozen variant names its base here)

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
        return (isinstance(other, XMLObject) and self._model is other._model
                and self.node is other.node)

    def __hash__(self):
        return id(self.node)

    @classmethod
    def declared_props(cls):
        """Every Prop declared on this class (and its bases), by name."""
        return dict(cls._props)


XMLObject._model = XMLObject


# ---------------------------------------------------------------- read-once (frozen) documents


def freeze(obj):
    """Make OBJ (a document's root model object, usually the Domain) and the model objects read
    from it read-once until the document is thawed (see the module docstring). Call it after the
    last step that edits the tree. Returns OBJ; freezing a frozen object does nothing."""
    if "_group" not in obj.__dict__:
        _freeze_into(obj, _Group())
    return obj


def thaw(obj):
    """End freezing for the whole document OBJ belongs to: every model object of it reads the
    tree again. Harmless on an object that is not frozen."""
    group = obj.__dict__.get("_group")
    if group is not None:
        group.thaw()
    return obj


def is_frozen(obj):
    return "_group" in obj.__dict__


class frozen:
    """`with frozen(domain):` freezes for a read-only step and thaws afterwards (unless the step
    thawed it by writing, or it was frozen before)."""

    def __init__(self, obj):
        self.obj = obj
        self.was_frozen = False

    def __enter__(self):
        self.was_frozen = is_frozen(self.obj)
        return freeze(self.obj)

    def __exit__(self, *exc):
        if not self.was_frozen:
            thaw(self.obj)


class _Group:
    """The frozen model objects of one document (a write through any of them thaws them all).

    It holds them by weak reference: each object names its group, and a strong reference back
    would make every frozen document a reference cycle that only the garbage collector frees
    (a batch conversion would spend ~8 % of its time there). An object gone needs no thawing."""

    __slots__ = ("objects",)

    def __init__(self):
        self.objects = []

    def thaw(self):
        objects, self.objects = self.objects, []
        for ref in objects:
            obj = ref()
            if obj is None:
                continue
            frozen_cls = type(obj)
            obj.__class__ = frozen_cls._model
            memo = obj.__dict__
            dropped = frozen_cls._dropped_at_thaw
            for name in [name for name in memo if name in dropped]:
                del memo[name]


def _freeze_into(obj, group):
    memo = obj.__dict__
    if "_group" in memo:
        return obj
    cls = _frozen_class(obj._model)
    obj.__class__ = cls
    memo["_group"] = group
    group.objects.append(weak_ref(obj))
    for name in cls._kept_lists:  # Children(cache=True) lists built before freezing
        for child in memo.get(name, ()):
            _freeze_into(child, group)
    return obj


def _frozen_object(cls, node, group):
    """A frozen object of the frozen class CLS wrapping NODE: what freezing CLS._model(NODE) into
    GROUP makes, without building the plain object first (model classes have no __init__ of their own)."""
    obj = object.__new__(cls)
    memo = obj.__dict__
    memo["node"] = node
    memo["_group"] = group
    group.objects.append(weak_ref(obj))
    return obj


def _snapshot(obj):
    """The first element at every sub-element path the class of OBJ reads ({path: element}), from
    one walk of the element's subtree that visits only the elements some path names. Like Prop's
    own reads, 'a/b' is the first <b> of the first <a>."""
    snap = {}
    plan = type(obj)._snapshot_plan
    if plan:
        _fill(obj.node, plan, snap)
    obj.__dict__["_snap"] = snap
    return snap


def _fill(node, plan, snap):
    # Over a slice: lxml builds it in one call, without the iterator `for child in node` sets up
    # (about a third of a short walk's cost).
    for child in node[:]:
        step = plan.get(child.tag)  # None for unmodelled elements, comments and PIs
        if step is None:
            continue
        path, below = step
        if path in snap:
            continue  # only the first element of a name, as find() does
        snap[path] = child
        if below:
            _fill(child, below, snap)


def _snapshot_plan(paths):
    """From element paths (each a list of tags): a tree of {tag: (element path, {tag below: ...})}."""
    plan = {}
    for steps in paths:
        level, prefix = plan, ""
        for tag in steps:
            prefix += tag
            level = level.setdefault(tag, (prefix, {}))[1]
            prefix += "/"
    return plan


_FROZEN_CLASSES = {}
_MUTABLE = (list, dict, set, bytearray)


def _frozen_class(model):
    cls = _FROZEN_CLASSES.get(model)
    if cls is None:
        cls = _FROZEN_CLASSES[model] = _make_frozen_class(model)
    return cls


def _make_frozen_class(model):
    namespace = {}
    for klass in reversed(model.__mro__[:-1]):  # bases first, so that subclasses override; not object
        for name, value in vars(klass).items():
            if isinstance(value, Prop):
                namespace[name] = (_MemoProp if value.elements else _MemoAttr)(name, value)
            elif isinstance(value, Children):
                namespace[name] = _MemoChildren(name, value)
            elif isinstance(value, Child):
                namespace[name] = _MemoChild(name, value)
            elif isinstance(value, property):
                # a write-only property stays as it is (writing it thaws, as any property does)
                namespace[name] = _MemoProperty(name, value) if value.fget is not None else value
            else:
                namespace.pop(name, None)  # redefined as a plain attribute or method
    memo_names = tuple(namespace)
    kept_lists = tuple(name for name, d in namespace.items() if isinstance(d, _MemoChildren) and d.desc.cache)
    # The snapshot holds the elements Props read below the wrapped element, and the first element
    # along each plain sub-object path: an absent sub-object (most of them: <ip>, <route>,
    # <portForward>, <driver><host>, a domain's <disk>s and <serial>s, ...) is answered without
    # looking again, and a present one wraps the element the snapshot found.
    paths = [d.desc.elements for d in namespace.values() if type(d) is _MemoProp]
    paths += [d.desc.steps for d in namespace.values() if isinstance(d, _MemoChild) and d.desc.steps is not None]
    namespace.update(
        __module__=model.__module__, __qualname__=model.__qualname__, __doc__=model.__doc__,
        _model=model,
        _dropped_at_thaw=frozenset(set(memo_names) - set(kept_lists)) | {"_group", "_snap", "_has"},
        _kept_lists=kept_lists,
        _snapshot_plan=_snapshot_plan(paths),
        _tree_names=frozenset(memo_names),  # writing one of these thaws the document
        __setattr__=_frozen_setattr, __delattr__=_frozen_delattr, has=_frozen_has,
    )
    return type(model.__name__, (model,), namespace)


def _frozen_setattr(self, name, value):
    if name in self._tree_names:
        self.__dict__["_group"].thaw()  # the class is the model class again: its descriptor writes
    object.__setattr__(self, name, value)


def _frozen_delattr(self, name):
    if name in self._tree_names:
        self.__dict__["_group"].thaw()
    object.__delattr__(self, name)


def _frozen_has(self, path):
    memo = self.__dict__
    if path in self._snapshot_plan:  # a child element some path names: the snapshot knows
        snap = memo.get("_snap")
        if snap is None:
            snap = _snapshot(self)
        return path in snap
    known = memo.get("_has")
    if known is None:
        known = memo["_has"] = {}
    found = known.get(path)
    if found is None:
        found = known[path] = self.node.find(path) is not None
    return found


# The descriptors of a frozen class. Each is a non-data descriptor that stores what it computes in
# the instance's __dict__, which then answers every later read; everything a first read needs is
# worked out once per class, here.


class _MemoAttr:
    """A Prop of the wrapped element's own attribute ('@name'): one look-up, no snapshot."""

    __slots__ = ("name", "desc", "attr", "convert", "default")

    def __init__(self, name, desc):
        self.name, self.desc, self.attr, self.default = name, desc, desc.attr, desc.default
        self.convert = None if desc.kind is str else desc.kind

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.desc
        value = obj.node.get(self.attr)
        if value is None:
            value = self.default
        elif self.convert is not None:
            value = self.convert(value.strip())
        obj.__dict__[self.name] = value
        return value


class _MemoProp:
    """A Prop of an element below the wrapped one: read from the object's snapshot."""

    __slots__ = ("name", "desc", "attr", "convert", "element_path", "default")

    def __init__(self, name, desc):
        self.name, self.desc, self.attr, self.default = name, desc, desc.attr, desc.default
        self.convert = None if desc.kind is str else desc.kind
        self.element_path = "/".join(desc.elements)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.desc
        memo = obj.__dict__
        snap = memo.get("_snap")
        if snap is None:
            snap = _snapshot(obj)
        node = snap.get(self.element_path)
        value = None if node is None else node.get(self.attr) if self.attr else node.text
        if value is None:
            value = self.default
        elif self.convert is not None:
            value = self.convert(value.strip())
        memo[self.name] = value
        return value


class _MemoChild:
    """A Child of a frozen object: the element the snapshot found (for a plain path), wrapped in a
    frozen object of the same document."""

    __slots__ = ("name", "desc", "path", "frozen_cls")

    def __init__(self, name, desc):
        self.name, self.desc = name, desc
        self.path = desc.path if desc.steps is not None else None  # the snapshot's key, for a plain path
        # The sub-objects' frozen class, made at the first read: most of a document's classes are
        # never read in a conversion, and a model class may name itself.
        self.frozen_cls = None

    def _sub_class(self):
        self.frozen_cls = _frozen_class(self.desc.cls)
        return self.frozen_cls

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.desc
        memo = obj.__dict__
        if self.path is None:
            node = self.desc.first_element(obj.node)
        else:
            snap = memo.get("_snap")
            if snap is None:
                snap = _snapshot(obj)
            node = snap.get(self.path)
        value = None if node is None else _frozen_object(self.frozen_cls or self._sub_class(), node, memo["_group"])
        memo[self.name] = value
        return value


class _MemoChildren(_MemoChild):
    __slots__ = ()

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.desc
        memo = obj.__dict__
        if self.path is None:
            found = True
        else:
            snap = memo.get("_snap")
            if snap is None:
                snap = _snapshot(obj)
            found = self.path in snap
        if found:
            cls, group = self.frozen_cls or self._sub_class(), memo["_group"]
            value = [_frozen_object(cls, node, group) for node in self.desc.elements(obj.node)]
        else:
            value = []  # the snapshot saw none: no second look
        memo[self.name] = value
        return value


class _MemoProperty:
    __slots__ = ("name", "desc")

    def __init__(self, name, desc):
        self.name, self.desc = name, desc

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.desc
        value = self.desc.fget(obj)
        if not isinstance(value, _MUTABLE):
            obj.__dict__[self.name] = value
        return value


# ---------------------------------------------------------------- new elements


def copied(make):
    """Decorator: MAKE(*KEY) makes a new element; the decorated function returns a copy of the one
    made (once) for KEY. lxml sets a new element's attributes one at a time, which costs about
    three times a copy: each prepared domain gets its balloon, aliases and PCI addresses this way.
    The elements made are never put in a tree, so no domain sees another's."""
    kept = functools.lru_cache(maxsize=1024)(make)

    def copy(*key):
        return kept(*key).__copy__()

    return functools.wraps(make)(copy)
