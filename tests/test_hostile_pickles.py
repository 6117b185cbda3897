"""Hostile StyleGAN2 checkpoints (issue 13): none hangs, none exhausts memory, each is one clear error.

The pickles are written opcode by opcode here (pickle's own opcode table, the bytes spelled out), so
the refusals are checked against what Python's unpickler would really do with them: grow the memo to
2**32 slots, ask the file for 2**62 bytes, or hash / format a value shared 2**60 times over.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from test_stylegan2_load import dumps, nv_generator, save_rosinality, tiny

from olam_edit.adapters import stylegan2 as S
from olam_edit.adapters.stylegan2 import opscan
from olam_edit.errors import ShapeMismatchError, UnsafePickleError, WeightFileError

PROTO4 = b"\x80\x04"
SHARED = b")" + b"2\x86" * 60  # EMPTY_TUPLE, then 60 x (DUP, TUPLE2): a tuple of 2**60 leaves


def persistent_id_bomb() -> bytes:
    """``{"G_ema": persistent_load(t)}`` with ``t`` shared 2**60 times: its ``repr`` never ends."""
    return PROTO4 + b"}\x8c\x05G_ema" + SHARED + b"Qs."


def hash_bomb() -> bytes:
    """A dict whose key is that tuple: the unpickler hashes it (2**60 steps) while loading."""
    return PROTO4 + b"}" + SHARED + b"Ns."


def late_sharing_bomb(levels: int = 60) -> bytes:
    """Lists shared in a tuple first and filled afterwards (each level doubles): small as it is built,
    2**60 leaves written out."""
    out = bytearray(PROTO4 + b"N\x94")  # T_0 = None, memo 0
    for level in range(levels):
        t_prev, l_new, t_new = 2 * level, 2 * level + 1, 2 * level + 2
        out += b"0"  # POP T_{i-1} (kept in the memo)
        out += b"]\x94"  # L_i = [], memo l_new
        out += b"2\x86\x94"  # T_i = (L_i, L_i), memo t_new
        out += b"0" + b"h" + bytes([l_new]) + b"h" + bytes([t_prev]) + b"a0"  # L_i.append(T_{i-1})
        out += b"h" + bytes([t_new])  # T_i on the stack
    return bytes(out + b".")


def deep_nesting(depth: int = 100_000) -> bytes:
    """Lists nested ``depth`` deep (their hash / repr / comparison recurse in C)."""
    return PROTO4 + b"]" * depth + b"a" * (depth - 1) + b"."


def huge_memo_index() -> bytes:
    """LONG_BINPUT 2**32-1: Python's unpickler resizes its memo to that many slots."""
    return PROTO4 + b"Nr\xff\xff\xff\xff."


def huge_payload(opcode: bytes, width: int, length: int) -> bytes:
    """A payload opcode (BINBYTES8, BINUNICODE8, BYTEARRAY8, BINBYTES) claiming ``length`` bytes."""
    return b"\x80\x05" + opcode + length.to_bytes(width, "little") + b"abc."


HOSTILE = {
    "persistent_id_bomb.pkl": persistent_id_bomb(),
    "hash_bomb.pkl": hash_bomb(),
    "late_sharing.pkl": late_sharing_bomb(),
    "deep_nesting.pkl": deep_nesting(),
    "long_binput.pkl": huge_memo_index(),
    "binbytes8.pkl": huge_payload(b"\x8e", 8, 2**62),
    "binunicode8.pkl": huge_payload(b"\x8d", 8, 2**62),
    "bytearray8.pkl": huge_payload(b"\x96", 8, 2**62),
    "binbytes4.pkl": huge_payload(b"B", 4, 2**32 - 1),
}
# what each refusal names: the opcode and the bound it broke
NAMED = {
    "persistent_id_bomb.pkl": ("TUPLE2", "MAX_EXPANDED_NODES"), "hash_bomb.pkl": ("TUPLE2", "MAX_EXPANDED_NODES"),
    "late_sharing.pkl": ("STOP", "MAX_EXPANDED_NODES"), "deep_nesting.pkl": ("APPEND", "MAX_NESTING"),
    "long_binput.pkl": ("LONG_BINPUT", "MAX_MEMO_INDEX"), "binbytes8.pkl": ("BINBYTES8", "MAX_PAYLOAD_BYTES"),
    "binunicode8.pkl": ("BINUNICODE8", "MAX_PAYLOAD_BYTES"), "bytearray8.pkl": ("BYTEARRAY8", "MAX_PAYLOAD_BYTES"),
    "binbytes4.pkl": ("BINBYTES", "MAX_PAYLOAD_BYTES"),
}


def test_the_hostile_pickles_are_what_they_claim() -> None:
    """Each fixture really is a pickle Python starts on (the opcodes parse) and a small one; the same
    opcodes with 3 levels instead of 60 unpickle to the structures described (and pass the scan)."""
    import pickletools

    for name, data in HOSTILE.items():
        first = next(pickletools.genops(io.BytesIO(data)))
        assert first[0].name == "PROTO", name
        assert len(data) < 300 or name in ("deep_nesting.pkl", "late_sharing.pkl"), (name, len(data))
    small = PROTO4 + b")" + b"2\x86" * 3 + b"."
    assert pickle.loads(small) == ((((), ()), ((), ())), (((), ()), ((), ())))
    assert opscan.scan_pickle(io.BytesIO(small)) == len(small)
    t3 = pickle.loads(late_sharing_bomb(3))
    t2 = t3[0][0]  # T_3 = (L_3, L_3), L_3 = [T_2], ..., L_1 = [None]
    assert t3[0] is t3[1] and t2[0] is t2[1] and t2[0][0][0] is t2[0][0][1] and t2[0][0][0] == [None]
    assert opscan.scan_pickle(io.BytesIO(late_sharing_bomb(3))) == len(late_sharing_bomb(3))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pickle_is_refused_by_the_opcode_scan(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(HOSTILE[name])
    with pytest.raises(UnsafePickleError) as caught:
        S.load_stylegan2(tmp_path / name)
    opcode, bound = NAMED[name]
    message = str(caught.value)
    assert f"opcode {opcode} " in message and bound in message, message
    assert len(message) < 600


def test_late_sharing_is_refused_over_the_whole_graph() -> None:
    """Counted as it is built, every value of that pickle is tiny (the lists fill after they are
    shared): the check over the finished graph is what refuses it, at STOP."""
    with pytest.raises(UnsafePickleError, match=r"opcode STOP .*MAX_EXPANDED_NODES"):
        opscan.scan_pickle(io.BytesIO(late_sharing_bomb()))
    assert opscan.scan_pickle(io.BytesIO(late_sharing_bomb(20))) > 0  # 2**20 leaves: within the bound


def legacy_torch_file(object_pickle: bytes) -> bytes:
    """A legacy-format ``torch.save`` file (magic, protocol, system info) whose object pickle is given."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in
                    (torch.serialization.MAGIC_NUMBER, 1001, {"little_endian": True}))
    return head + object_pickle + pickle.dumps([], protocol=2)


def zip_torch_file(tmp_path: Path, object_pickle: bytes) -> bytes:
    """A zip-format ``torch.save`` file whose ``data.pkl`` is replaced by ``object_pickle``."""
    torch.save({"g_ema": {}}, tmp_path / "real.pt")
    out = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "real.pt") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, object_pickle if info.filename.endswith("data.pkl") else src.read(info))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["legacy", "zip"])
@pytest.mark.parametrize("name", ["persistent_id_bomb.pkl", "hash_bomb.pkl", "long_binput.pkl", "binbytes8.pkl"])
def test_hostile_object_pickle_inside_a_pt_is_refused(tmp_path: Path, kind: str, name: str) -> None:
    """torch.load formats a bad persistent id with an f-string and hashes dict keys: the scan runs first."""
    body = HOSTILE[name]
    data = legacy_torch_file(body) if kind == "legacy" else zip_torch_file(tmp_path, body)
    (tmp_path / "hostile.pt").write_bytes(data)
    with pytest.raises(UnsafePickleError, match=f"opcode {NAMED[name][0]} "):
        S.load_stylegan2(tmp_path / "hostile.pt")


def test_real_pickles_pass_the_scan_unchanged(tmp_path: Path) -> None:
    """Every protocol of ordinary data, an NVlabs snapshot and both torch.save formats pass."""
    value = {"a": [1, 2.5, (3, "x")], "b": b"\x00" * 300, "c": {frozenset({1}), 4}, "d": None}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(value, protocol=protocol)
        assert opscan.scan_pickle(io.BytesIO(data)) == len(data)
    model = tiny(flavor="nvlabs")
    (tmp_path / "g.pkl").write_bytes(dumps({"G_ema": nv_generator(model)}))
    loaded = S.load_stylegan2(tmp_path / "g.pkl")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))
    save_rosinality(tiny(), tmp_path / "g.pt")
    assert S.load_stylegan2(tmp_path / "g.pt").config.size == 16


def nvlabs_with(**changes: object) -> bytes:
    """A tiny NVlabs pickle whose Generator (and mapping) attributes are overridden."""
    g = nv_generator(tiny(flavor="nvlabs"))
    g.state.update(changes)
    mapping = g.state["_modules"]["mapping"].state
    mapping.update({k: v for k, v in changes.items() if k in ("z_dim", "w_dim", "num_layers")})
    return dumps({"G_ema": g})


@pytest.mark.parametrize(("changes", "field"), [
    ({"z_dim": 10**7}, "z_dim"), ({"z_dim": 1e7}, "z_dim"), ({"w_dim": 10**6}, "style_dim"),
    ({"img_resolution": 2**20}, "size"), ({"num_layers": 10**5}, "n_mlp"), ({"img_channels": 10**6}, "img_channels"),
])
def test_nvlabs_network_sizes_are_checked_before_anything_is_built(tmp_path: Path, changes: dict,
                                                                   field: str) -> None:
    (tmp_path / "big.pkl").write_bytes(nvlabs_with(**changes))
    with pytest.raises(WeightFileError, match=f"network's {field} is outside the loader's bound"):
        S.load_stylegan2(tmp_path / "big.pkl")


def test_sizes_within_the_bounds_but_unlike_the_tensors_build_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """z_dim = w_dim = 4096 pass the bounds; the shapes (from a meta-device network) refuse them first."""
    from olam_edit.adapters.stylegan2 import build

    built: list[object] = []
    real = build.StyleGAN2Generator

    def counting(config: object) -> object:
        built.append(torch.empty(0).device.type)  # the device modules are built on now
        return real(config)

    monkeypatch.setattr(build, "StyleGAN2Generator", counting)
    (tmp_path / "wide.pkl").write_bytes(nvlabs_with(z_dim=4096, w_dim=4096))
    with pytest.raises(ShapeMismatchError, match="wrong shape"):
        S.load_stylegan2(tmp_path / "wide.pkl")
    assert built == ["meta"]  # only the shape-only copy


PROBE = """
import contextlib, io, json, resource, sys, time
from olam_edit.cli import main

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

good, out_dir, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
main(["convert", good, out_dir + "/warm"])  # imports, thread pools, allocator arenas
base, report = peak_mb(), {}
for i, path in enumerate(paths):
    err, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["convert", path, out_dir + f"/out{i}"])
    report[path] = {"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}
print(json.dumps({"report": report, "peak_mb": peak_mb() - base}))
"""


def test_cli_convert_prints_one_line_exits_2_and_stays_within_300_mb(tmp_path: Path) -> None:
    """Every hostile checkpoint above through ``olam-edit convert`` in one subprocess: each one line on
    stderr and exit 2, the peak RSS under 300 MB above the warmed-up baseline. A hang fails (timeout)."""
    files = dict(HOSTILE) | {"z_dim.pkl": nvlabs_with(z_dim=10**7),
                             "legacy_bomb.pt": legacy_torch_file(hash_bomb()),
                             "zip_bomb.pt": zip_torch_file(tmp_path, persistent_id_bomb())}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    save_rosinality(tiny(), tmp_path / "good.pt")
    paths = [str(tmp_path / name) for name in files]
    run = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "good.pt"), str(tmp_path), *paths],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    for path in paths:
        entry = result["report"][path]
        assert entry["code"] == 2, (path, entry)
        lines = entry["stderr"].strip().splitlines()
        assert len(lines) == 1 and "olam-edit convert: error:" in lines[0], (path, entry)
        assert "Traceback" not in entry["stderr"]
    print({Path(p).name: round(result["report"][p]["seconds"], 3) for p in paths})  # measured, not asserted
    assert result["peak_mb"] < 300, result["peak_mb"]


def test_installed_cli_on_the_246_byte_class_of_pickle_does_not_hang(tmp_path: Path) -> None:
    """The real ``olam-edit`` entry point, as the report ran it; 30 s is far above its time."""
    (tmp_path / "small.pkl").write_bytes(persistent_id_bomb())
    run = subprocess.run([sys.executable, "-c", "import sys; from olam_edit.cli import main; sys.exit(main())",
                          "convert", str(tmp_path / "small.pkl"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "MAX_EXPANDED_NODES" in run.stderr
    assert not (tmp_path / "out").exists()
