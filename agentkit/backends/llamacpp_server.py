"""llama-cpp-python's OpenAI-compatible server, loading models as agentkit does.

``python -m agentkit.backends.llamacpp_server --model M.gguf ...`` takes ``python -m llama_cpp.server``'s
arguments. The one difference: on CPUs where llama.cpp's extra weight buffers crash (AMX; see
:func:`agentkit.backends.llamacpp.load_llama`) the server loads without them.
"""

from __future__ import annotations

import runpy

from agentkit.backends.llamacpp import _avoid_extra_buffers


def main() -> None:
    if _avoid_extra_buffers():
        import llama_cpp.llama_cpp as low

        default = low.llama_model_default_params

        def params():  # type: ignore[no-untyped-def]
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = params  # this process only serves: for every model it loads
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
