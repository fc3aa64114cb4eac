"""llama-cpp-python's OpenAI-compatible server, loading models as agentkit does.

``python -m agentkit.backends.llamacpp_server --model M.gguf ...`` takes ``python -m llama_cpp.server``'s
arguments. The one difference: on CPUs where llama.cpp's extra weight buffers crash (AMX; see
:func:`agentkit.backends.llamacpp.load_llama`) the server loads without them.
"""

from __future__ import annotations

import runpy

from agentkit.backends.llamacpp import _avoid_extra_buffers, _model_params

__all__ = ["main"]


def main() -> None:
    # the server loads its models inside this block: it runs until the process ends
    with _model_params(extra_buffers=not _avoid_extra_buffers()):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
