"""Old names that moved: a module's `__getattr__` that finds them where they live now, and keyword arguments under
their new names; each with a warning."""

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping


def warn_moved(old: str, new: str) -> None:
    """A `FutureWarning` (shown by default, unlike a `DeprecationWarning`) that `old` is now `new`, pointing at the
    caller of the old name."""
    warnings.warn(f"{old} moved to {new}; the old name will be removed.", FutureWarning, stacklevel=3)


def moved_names(module_name: str, moved: Mapping[str, str]) -> Callable[[str], object]:
    """
    A module-level `__getattr__` for `module_name`: each old name of `moved` resolves to `"new.module:name"` with
    [`warn_moved`]. The new module is imported when an old name is first read, not when `module_name` is, so that a
    module can point at one that imports it.
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        new_module, new_name = moved[name].split(":")
        warn_moved(f"{module_name}.{name}", f"{new_module}.{new_name}")
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__


def renamed_keywords(**new_names: str) -> Callable[[Callable], Callable]:
    """
    A decorator: each old keyword argument `old=...` given to the function is passed on as its new name
    (`renamed_keywords(old="new")`), with a `FutureWarning`; giving both names is a `TypeError`.
    """

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in new_names.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old!r} and its new name {new!r}")
                    warnings.warn(
                        f"{function.__name__}({old}=...) is now {new}=...; the old name will be removed.",
                        FutureWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate
