"""Type stubs for tfshard/_graph.pyx."""

from typing import Optional

def decode_nodes(data: bytes) -> list[tuple[list[tuple[str, int]], list[tuple[str, str, str]],
                                            list[tuple[int, str, int]],
                                            Optional[tuple[str, str]], Optional[bool]]]: ...
def fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int, int]]: ...
