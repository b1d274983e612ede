"""`swift-gguf doctor`: is everything in place? One report, as JSON or text."""
from __future__ import annotations

import platform
import sys

from . import __version__
from .paths import cache_dir, models_dir, profiles_dir

CPU_FLAGS = ("avx", "avx2", "avx512f", "fma", "f16c", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def _cpu_features() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
        return [x for x in CPU_FLAGS if x in flags]
    except OSError:
        return [platform.machine()]


def collect() -> dict:
    """Everything doctor reports; 'layer_skip' is True only with the patched library loaded."""
    report: dict = {"swift_gguf": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                    "cpu_features": _cpu_features(), "cache_dir": str(cache_dir())}
    try:
        from . import native
        import llama_cpp
        build = native.build_info()
        report.update(
            layer_skip=True,
            llama_cpp_python=llama_cpp.__version__,
            library=native.library_path(),
            abi_version=native.ABI_VERSION,
            layer_skip_architectures=list(native.layer_skip_architectures()),
            pin=build.get("pin", {}),
            patches=build.get("patches", []),
            cmake_args=build.get("cmake_args", []),
            backends=native.backends(),
            gpu_offload=native.gpu_offload_supported(),
            rpc=native.rpc_supported(),   # --rpc / swift-gguf rpc-server
            # per backend device: is speculative output guaranteed identical to plain decoding?
            identical_output={b: native.verification_is_exact("cpu" if b.upper().startswith("CPU") else b)
                              for b in native.backends()},
            system_info=llama_cpp.llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        )
        if report["cpu_features"] and any(f.startswith("amx") for f in report["cpu_features"]):
            report["note"] = "CPU has AMX; the build disables llama.cpp's AMX path (it crashes here, see README)"
    except Exception as e:   # doctor reports problems, it does not raise them
        report.update(layer_skip=False, error=str(e))
    from .models import list_cached
    report["models"] = [dict(r, path=str(r["path"])) for r in list_cached()]
    report["models_dir"] = str(models_dir())
    report["profiles"] = sorted(str(p) for p in profiles_dir().glob("*.json")) if profiles_dir().exists() else []
    return report


def render(report: dict) -> str:
    ok = "ok" if report.get("layer_skip") else "MISSING"
    lines = [f"swift-gguf {report['swift_gguf']} (python {report['python']}, {report['platform']})",
             f"patched llama.cpp (layer skip): {ok}"]
    if report.get("layer_skip"):
        pin = report.get("pin", {})
        lines += [f"  llama-cpp-python {report['llama_cpp_python']}, pin {pin.get('version', '?')} "
                  f"(llama.cpp {pin.get('llama_cpp_commit', '?')}), patches: {', '.join(report['patches']) or '?'}",
                  f"  library: {report['library']}",
                  f"  layer skip architectures: {', '.join(report['layer_skip_architectures'])} "
                  "(recurrent and hybrid models decode plainly: their state cannot be rolled back)",
                  f"  backends: {', '.join(report['backends'])}; GPU offload: {report['gpu_offload']}; "
                  f"RPC (--rpc, rpc-server): {report['rpc']}",
                  f"  cmake args: {' '.join(report['cmake_args'])}"]
        for dev, exact in report.get("identical_output", {}).items():
            lines.append(f"  {dev}: speculative output " + ("identical to plain decoding (batch-invariant verification)"
                                                           if exact else "may differ from plain decoding at near-ties "
                                                           "(verification batches are not bit-identical here)"))
    else:
        lines.append(f"  {report.get('error', '')}")
    lines.append(f"cpu features: {', '.join(report['cpu_features'])}")
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    lines.append(f"cache: {report['cache_dir']}")
    lines.append(f"models ({len(report['models'])}): " + ", ".join(r.get("alias") or r["path"] for r in report["models"]))
    lines.append(f"profiles: {len(report['profiles'])}")
    return "\n".join(lines)


def run_check(model: str, flash_attn: bool, threads: int | None, threads_batch: int | None,
              n_gpu_layers: int = 0, echo=None) -> list[dict]:
    """`doctor --check`: the bitwise self-test of swift_gguf.selfcheck with the user's settings and
    their neighbours; each setting's line goes to echo as soon as it is known."""
    from .models import resolve_model
    from .selfcheck import check_setting, user_settings
    path = resolve_model(model, progress=echo is not None)
    settings = user_settings(flash_attn, threads, threads_batch)
    if echo:
        echo(f"losslessness check on {path.name} ({len(settings)} settings; yours first):")
    results = []
    for setting in settings:
        result = check_setting(path, setting, n_gpu_layers=n_gpu_layers, time_steps=True)
        results.append(result.as_dict())
        if echo:
            echo("  " + result.summary())
            if result.step_summary():
                echo("          " + result.step_summary())
    if echo:
        failed = [r for r in results if not r["passed"]]
        echo("  => speculative output is identical to plain decoding with these settings" if not failed else
             "  => speculative output may differ from plain decoding with the failing settings; "
             "use --spec off there, and please report it with `swift-gguf doctor --check --json`")
    return results
