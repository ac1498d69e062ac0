"""Error classes. Every error a user can cause is a VirtnetError; the CLI prints it as
`virtnet: error: <where>: <message>` and exits with its exit_code (no traceback without --debug)."""


class VirtnetError(Exception):
    """Base class: a rejected input or a failed operation (exit status 1)."""

    exit_code = 1

    def __init__(self, message, *, file=None, line=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def located(self, file=None, line=None):
        """Fill in the location when the raiser did not know it."""
        if self.file is None:
            self.file = file
        if self.line is None:
            self.line = line
        return self

    def __str__(self):
        from virtnet.conf.text import visible  # values quoted in a message may hold anything

        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        return visible(where + self.message)


class UsageError(VirtnetError):
    """Wrong command-line usage (exit status 2)."""

    exit_code = 2


class XMLInputError(VirtnetError):
    """The domain XML is malformed, refused by the schema or by a semantic rule."""


class UnsupportedError(XMLInputError):
    """Valid XML that this virtnet cannot act on yet (e.g. type='network' in xml2argv)."""


class StoreError(VirtnetError):
    """The definition store refused or failed an operation."""


class HostError(VirtnetError):
    """A host operation (tap, netlink, process, QMP) failed."""
