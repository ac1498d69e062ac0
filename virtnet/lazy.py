"""Modules imported at their first use, for the verbs that may never need them."""

from importlib import import_module


class LazyModule:
    """Stands in for module MODULE_NAME under NAME among a module's globals (NAMESPACE) until its
    first use, which imports it and puts it in its place. Cheaper than an import statement inside
    each function that needs it: that costs ~8 K instructions a call (a failed look-up of the
    module's __path__ raises and formats an AttributeError each time)."""

    def __init__(self, namespace, name, module_name):
        self.namespace, self.name, self.module_name = namespace, name, module_name

    def __getattr__(self, attr):
        module = self.namespace[self.name] = import_module(self.module_name)
        return getattr(module, attr)
