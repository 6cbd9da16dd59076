"""Package exports loaded on first use (PEP 562): `lazy_exports(package, {submodule: [names]})` gives the
package's `__getattr__` and `__dir__`, so importing the package (and the CLI's --help) stays light and
torch loads only when a name that needs it is used."""

import importlib


def lazy_exports(package: str, exports: dict[str, list[str]]):
    where = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(list(namespace) + list(where))

    return __getattr__, __dir__
