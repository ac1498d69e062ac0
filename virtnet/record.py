"""Small value classes for the conversion path, in place of dataclasses.

A dataclass is built by generating and compiling its methods when its module is imported, which
is a noticeable share of a one-file `virtnet xml2argv`. A Record subclass lists its fields in
__slots__ and writes its own __init__; equality, hashing and repr come from the fields.
"""


class Record:
    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
