"""Modules imported at their first use, for the verbs that may never need them."""

from importlib import import_module


class LazyModule:
    """Stands in for module MODULE_NAME under NAME among a module's globals (NAMESPACE) until its
    first use, which imports it and puts it in its place. Cheaper than an import statement inside
    each function that needs it: that costs ~8 K instructions a call (a failed look-up of the
    module's __path__ raises and formats an AttributeError each time)."""

    # Slots with names no module attribute has: __getattr__ answers every other name.
    __slots__ = ("_namespace", "_name", "_module_name")

    def __init__(self, namespace, name, module_name):
        self._namespace, self._name, self._module_name = namespace, name, module_name

    def __getattr__(self, attr):
        module = self._namespace[self._name] = import_module(self._module_name)
        return getattr(module, attr)
