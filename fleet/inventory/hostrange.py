"""Host ranges as Ansible expands them: `lab[01:30]` (leading zeros kept), `n[1:9:2]` (a
stride), `gpu-[a:f]` (letters), and several in one name (`r[1:2]-c[a:b]`), first range outermost."""
from __future__ import annotations

import string


class RangeError(ValueError):
    pass


def expand(name: str) -> list[str]:
    """Every host name a pattern stands for; a name without `[` is itself."""
    if "[" not in name:
        return [name]
    head, _, rest = name.partition("[")
    inner, closed, tail = rest.partition("]")
    if not closed:
        raise RangeError(f"host range in {name!r} has no closing ']'")
    return [head + item + more for item in _items(inner, name) for more in expand(tail)]


def _items(inner: str, name: str) -> list[str]:
    bounds = inner.split(":")
    if len(bounds) not in (2, 3):
        raise RangeError(f"host range [{inner}] in {name!r}: expected [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise RangeError(f"host range [{inner}] in {name!r} has no end")
    if not step_text.isdigit() or int(step_text) < 1:
        raise RangeError(f"host range [{inner}] in {name!r}: the step must be a whole number of at least 1")
    step = int(step_text)
    letters = string.ascii_letters
    if len(begin) == 1 and len(end) == 1 and begin in letters and end in letters:
        first, last = letters.index(begin), letters.index(end)
        if first > last:
            raise RangeError(f"host range [{inner}] in {name!r}: the begin comes after the end")
        return list(letters[first:last + 1:step])
    if not (begin.isdigit() and end.isdigit()):
        raise RangeError(f"host range [{inner}] in {name!r}: expected numbers ([01:30]) or single letters ([a:f])")
    width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
    if width and len(end) != width:
        raise RangeError(f"host range [{inner}] in {name!r}: with leading zeros, begin and end need the same width")
    if int(begin) > int(end):
        raise RangeError(f"host range [{inner}] in {name!r}: the begin comes after the end")
    return [str(i).zfill(width) for i in range(int(begin), int(end) + 1, step)]
