"""What the tools never do: delete or overwrite a user's files, share an output folder between runs,
save a diverged model, or answer a failed write with a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aesop_loss import AutoEncoder
from aesop_loss.cli import run_cli
from aesop_loss.convert import main as convert_main
from aesop_loss.pretrain import main as pretrain_main
from aesop_loss.train import RunFolder

from conftest import AE_CKPT, IMAGES, TINY_FLAGS, wait_for_file

pytestmark = pytest.mark.usefixtures("two_photo_report")  # a short report after each run

EXAMPLES = Path(__file__).parents[1] / "examples"
TINY = [*TINY_FLAGS, "--crop", "32", "--workers", "0"]


def _pretrain_args(out: Path, *extra: str) -> list[str]:
    return ["--data", str(IMAGES), "--out", str(out), *TINY, "--val", "none", "--batch-size", "1", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A user's project folder: the source checkpoint beside files nobody may touch."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(AE_CKPT, folder / "ae.pth")
    (folder / "README.md").write_text("my project\n")
    (folder / "config.json").write_text('{"mine": true}\n')
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("keep me\n")
    return folder


# --- convert -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        (".", "is the current folder"),
        ("project", "holds the source"),
        ("..", "holds the source"),
        ("project/notes", "exists and is not empty"),
        ("project/README.md", "is a file"),
    ],
    ids=["cwd", "src-folder", "src-ancestor", "user-folder", "a-file"],
)
def test_convert_refuses_any_out_that_could_destroy_files(user_folder, monkeypatch, capsys, out, needle):
    monkeypatch.chdir(user_folder.parent)
    before = _snapshot(user_folder.parent)
    code = run_cli(convert_main, ["project/ae.pth", out])
    assert code == 2
    assert needle in _one_error_line(capsys)
    assert _snapshot(user_folder.parent) == before  # nothing written, nothing deleted


def test_convert_overwrite_replaces_only_the_model_files(user_folder, tmp_path):
    out = tmp_path / "model"
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(out)  # an older model folder
    (out / "mine.txt").write_text("keep me\n")
    (out / "README.md").write_text("an older card\n")
    assert convert_main([str(user_folder / "ae.pth"), str(out), "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "keep me\n"
    assert "sha256" in (out / "README.md").read_text().lower()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "mine.txt",
        "model.safetensors",
    ]
    assert (
        AutoEncoder.from_pretrained(out).config["num_feat"] == AutoEncoder.from_pretrained(AE_CKPT).num_feat
    )
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


@pytest.mark.parametrize("kind", ["users-folder", "linked-out", "linked-config"])
def test_convert_overwrite_never_replaces_what_is_not_a_model_folder(user_folder, tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "users-folder":  # a user's folder with a README.md and a config.json of their own
        out.mkdir()
        (out / "README.md").write_text("my notes\n")
        (out / "config.json").write_text('{"mine": true}\n')
        (out / "model.safetensors").write_bytes(b"not even weights")
    elif kind == "linked-out":
        AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(tmp_path / "real")
        out.symlink_to(tmp_path / "real")
    else:
        AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(out)
        (tmp_path / "users.json").write_text('{"mine": 1}\n')
        (out / "config.json").unlink()
        (out / "config.json").symlink_to(tmp_path / "users.json")
    watched = tmp_path
    before = _snapshot(watched)
    assert run_cli(convert_main, [str(user_folder / "ae.pth"), str(out), "--overwrite"]) == 2
    line = _one_error_line(capsys)
    assert {"users-folder": "is not a model folder", "linked-out": "is a symbolic link",
            "linked-config": "config.json is a symbolic link"}[kind] in line  # fmt: skip
    assert _snapshot(watched) == before


@pytest.mark.parametrize("killed_after", [0, 1, 2, 3])
def test_a_kill_during_overwrite_leaves_a_consistent_loadable_folder(
    user_folder, tmp_path, monkeypatch, killed_after
):
    import aesop_loss.convert as convert_module

    out = tmp_path / "model"
    old = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
    old.save_pretrained(out)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):  # type: ignore[no-untyped-def]
        if str(dst).startswith(str(out) + os.sep):  # a replacement inside OUT
            if len(calls) == killed_after:
                raise KeyboardInterrupt  # what SIGKILL does to the sequence: it simply stops here
            calls.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(convert_module.os, "replace", replace_then_die)
    monkeypatch.setattr("aesop_loss._io.os.replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert_main([str(user_folder / "ae.pth"), str(out), "--overwrite"])
    monkeypatch.undo()
    loaded = AutoEncoder.from_pretrained(out)  # consistent: config.json agrees with the weights
    new_feat = AutoEncoder.from_pretrained(AE_CKPT).num_feat
    assert loaded.num_feat in (16, new_feat)


def test_a_staging_folder_of_a_killed_convert_is_removed_next_time(user_folder, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".model.{pid}.abcd.staging"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"70 MB in real life")
    live = tmp_path / f".model.{os.getpid()}.efgh.staging"  # a running convert's (this process)
    live.mkdir()
    (live / "config.json").write_text("{}")
    users = tmp_path / f".model.{pid}.ijkl.staging"  # same pattern, but holding a user's file
    users.mkdir()
    (users / "thesis.tex").write_text("mine\n")
    assert convert_main([str(user_folder / "ae.pth"), str(tmp_path / "model")]) == 0
    assert not stale.exists()
    assert live.exists()
    assert (users / "thesis.tex").read_text() == "mine\n"


def test_convert_into_a_new_or_empty_folder(user_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "nested"):
        assert convert_main([str(user_folder / "ae.pth"), str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.parametrize("failure", ["mismatch", "disk-full"])
def test_convert_removes_its_staging_folder_on_failure(user_folder, tmp_path, monkeypatch, capsys, failure):
    import aesop_loss.hub as hub

    if failure == "mismatch":
        load = AutoEncoder.from_pretrained.__func__  # type: ignore[attr-defined]

        def tampered(cls, src, **kwargs):  # type: ignore[no-untyped-def]
            model = load(cls, src, **kwargs)
            if ".staging" in str(src):  # the written copy comes back different
                with torch.no_grad():
                    next(model.parameters()).add_(1)
            return model

        monkeypatch.setattr(AutoEncoder, "from_pretrained", classmethod(tampered))
    else:

        def full_disk(tensors: object, filename: object, metadata: object = None) -> None:
            Path(filename).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(hub, "save_safetensors", full_disk)
    out = tmp_path / "out"
    code = run_cli(convert_main, [str(user_folder / "ae.pth"), str(out)])
    assert code == (2 if failure == "mismatch" else 1)
    line = _one_error_line(capsys)
    assert ("does not reproduce" if failure == "mismatch" else "no space left on the device") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no OUT, no staging left


# --- run folders: pretrain and train_esrgan -------------------------------------------------------------


@pytest.mark.slow
def test_pretrain_refuses_a_users_folder_and_touches_nothing(user_folder, capsys, monkeypatch):
    before = _snapshot(user_folder)
    assert run_cli(pretrain_main, _pretrain_args(user_folder, "--steps", "1")) == 2
    assert "holds other files and no pretrain run" in _one_error_line(capsys)
    monkeypatch.chdir(user_folder)
    assert run_cli(pretrain_main, _pretrain_args(Path("."), "--steps", "1")) == 2
    assert "holds other files" in _one_error_line(capsys)
    assert _snapshot(user_folder) == before


@pytest.mark.slow
def test_run_folders_of_the_two_tools_are_not_interchangeable(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "1")) == 0
    assert json.loads((out / ".aesop-run.json").read_text())["tool"] == "pretrain"
    code = run_cli(_esrgan_main(), ["--smoke", "--out", str(out)])
    assert code == 2
    assert "is a run folder of pretrain, not of train_esrgan" in _one_error_line(capsys)


@pytest.mark.slow
def test_a_run_from_before_markers_resumes(tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
    (out / ".aesop-run.json").unlink()  # as a run written by aesop-loss 0.1.0
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "2")) == 2
    assert pretrain_main(_pretrain_args(out, "--steps", "2", "--resume")) == 0
    assert (out / ".aesop-run.json").is_file()


def _esrgan_main():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_esrgan", EXAMPLES / "train_esrgan.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_train_esrgan_refuses_a_users_folder(user_folder, capsys):
    before = _snapshot(user_folder)
    assert run_cli(_esrgan_main(), ["--smoke", "--out", str(user_folder)]) == 2
    assert "holds other files and no train_esrgan run" in _one_error_line(capsys)
    assert _snapshot(user_folder) == before


@pytest.mark.parametrize(("flag", "value"), [("--lr", "nan"), ("--steps", "-3"), ("--gan-weight", "inf")])
def test_train_esrgan_flags_are_checked_first(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert run_cli(_esrgan_main(), ["--smoke", "--out", str(out), f"{flag}={value}"]) == 2
    assert flag in _one_error_line(capsys)
    assert not out.exists()


# --- links, adopted folders, damaged checkpoints (second safety pass) ---------------------------------


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-step pretraining run; tests copy it (a run folder moves with its files)."""
    out = tmp_path_factory.mktemp("shared") / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
    return out


@pytest.mark.slow
def test_a_lock_that_is_a_link_to_a_users_file_is_never_written(tmp_path, capsys, one_step_run):
    out = tmp_path / "run"
    shutil.copytree(one_step_run, out)  # a finished one-step run of its own
    users = tmp_path / "thesis.tex"
    users.write_text("years of work\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(users)
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume")) == 2
    assert ".lock is a symbolic link" in _one_error_line(capsys)
    assert users.read_text() == "years of work\n"


def test_a_linked_checkpoint_folder_is_refused_before_anything_is_deleted(tmp_path, capsys, one_step_run):
    out = tmp_path / "run"
    shutil.copytree(one_step_run, out)  # a finished one-step run of its own
    elsewhere = tmp_path / "users-checkpoints"
    shutil.move(str(out / "checkpoints"), elsewhere)
    (elsewhere / ".last.pt.keep.tmp").write_text("a user's file with a tool-like name\n")
    (out / "checkpoints").symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume")) == 2
    assert "checkpoints is a symbolic link" in _one_error_line(capsys)
    assert _snapshot(elsewhere) == before


@pytest.mark.parametrize("tool", ["pretrain", "train_esrgan"])
def test_resume_never_adopts_a_users_folder_on_its_word(tmp_path, capsys, tool):
    folder = tmp_path / "users"
    ckpt = folder / ("checkpoints/last.pt" if tool == "pretrain" else "state.pt")
    ckpt.parent.mkdir(parents=True)
    torch.save({"weights": torch.ones(2)}, ckpt)  # any torch.save of the user's
    (folder / "README.md").write_text("mine\n")
    (folder / ".notes.draft.tmp").write_text("mine too\n")
    (ckpt.parent / ".last.pt.x.tmp").write_text("and this\n")
    before = _snapshot(folder)
    if tool == "pretrain":
        code = run_cli(pretrain_main, _pretrain_args(folder, "--steps", "1", "--resume"))
    else:
        code = run_cli(_esrgan_main(), ["--smoke", "--out", str(folder), "--resume"])
    assert code == 2
    assert f"is not a {tool} checkpoint" in _one_error_line(capsys)
    assert _snapshot(folder) == before
    assert not (folder / ".aesop-run.json").exists()
    assert not (folder / ".lock").exists()


@pytest.mark.slow
def test_a_damaged_checkpoint_says_so_and_what_to_do(tmp_path, capsys, one_step_run):
    out = tmp_path / "run"
    shutil.copytree(one_step_run, out)  # a finished one-step run of its own
    ckpt = out / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume")) == 2
    line = _one_error_line(capsys)
    assert "is damaged or cut short" in line
    assert f"delete {ckpt}" in line
    AutoEncoder.from_pretrained(out)  # the model files of the last good save still load
    ckpt.unlink()
    assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_dead_runs_lock_is_free_at_once_though_its_workers_live_on(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, time\nfrom aesop_loss.train import RunFolder\n"
         f"run = RunFolder({str(out)!r}, tool='pretrain').claim()\n"
         "worker = os.fork()\n"  # a data-loader worker: it inherits the open lock file
         "if worker == 0:\n    time.sleep(60)\n    os._exit(0)\n"
         "print('held', worker, flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    words = holder.stdout.readline().split()
    assert words[0] == "held"
    worker = int(words[1])
    try:
        holder.kill()  # kill -9 of the run; its worker lives on, holding the inherited file
        holder.wait(timeout=30)
        os.kill(worker, 0)  # the worker is still alive
        with RunFolder(out, tool="pretrain") as run:
            assert run.path == out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_one_process_cannot_claim_a_folder_twice(tmp_path):
    with RunFolder(tmp_path / "run", tool="pretrain"), pytest.raises(Exception, match="this process"):
        RunFolder(tmp_path / "run", tool="pretrain").claim()


# --- one run per folder ------------------------------------------------------------------------------


@contextlib.contextmanager
def _running_pretrain(out: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aesop_loss.pretrain", *_pretrain_args(out), "--steps", "100000",
         "--save-every", "1", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_file(out / "checkpoints" / "last.pt", timeout=90)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


@pytest.mark.slow
def test_second_run_on_a_folder_is_refused_and_kill_9_does_not_block_resume(tmp_path, capsys):
    out = tmp_path / "run"
    with _running_pretrain(out) as proc:
        code = run_cli(pretrain_main, _pretrain_args(out, "--steps", "5", "--resume"))
        assert code == 2
        assert f"is in use by another run (pid {proc.pid}" in _one_error_line(capsys)
        # the second run wrote nothing: the first one's log still has each step once
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    ckpt = out / "checkpoints"
    (ckpt / ".last.pt.abc123_x.tmp").write_bytes(b"half a checkpoint")  # what a kill mid-save leaves
    (out / ".model.safetensors.x1y2_abc.tmp").write_bytes(b"half a model")
    step = int(torch.load(ckpt / "last.pt", weights_only=True)["step"])
    assert pretrain_main(_pretrain_args(out, "--steps", str(step + 2), "--log-every", "1", "--resume")) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt"]
    assert not list(out.glob(".*.tmp"))
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == list(range(1, step + 3))  # each step once, though the killed run logged ahead


def test_lock_is_released_with_its_process_and_names_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom aesop_loss.train import RunFolder\n"
         f"run = RunFolder({str(out)!r}, tool='pretrain').claim()\nprint('held', flush=True)\n"
         "time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=rf"in use by another run \(pid {holder.pid} on "):
            RunFolder(out, tool="pretrain").claim()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with RunFolder(out, tool="pretrain") as run:  # kill -9 left the lock file; the OS dropped the lock
        assert run.path == out


@pytest.mark.slow
def test_metrics_have_each_step_once_after_a_resume(tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "4", "--save-every", "2", "--log-every", "1")) == 0
    with open(out / "metrics.jsonl", "a") as fh:  # a run killed after logging steps 5-6, mid-line at 7
        fh.write('{"step": 5, "loss_rec": 1}\n{"step": 6, "loss_rec": 1}\n{"step": 7, "lo')
    assert pretrain_main(_pretrain_args(out, "--steps", "6", "--save-every", "2", "--log-every", "1",
                                        "--resume")) == 0  # fmt: skip
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- a diverged run stops and keeps its last good checkpoint ------------------------------------------------


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_save(tmp_path, capsys):
    out = tmp_path / "run"
    args = _pretrain_args(out, "--steps", "8", "--save-every", "1", "--lr", "1e30", "--ema", "0")
    code = run_cli(pretrain_main, args)
    line = _one_error_line(capsys)
    assert code == 1
    assert "non-finite (NaN/Inf) at step" in line
    stopped = int(line.split("at step ")[1].split(";")[0].split()[0])
    assert 2 <= stopped <= 8
    saved = int(torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"])
    assert 1 <= saved < stopped
    assert f"the checkpoint of step {saved}" in line
    assert f"Training steps: {saved}" in (out / "README.md").read_text()  # the model folder of that save
    model = AutoEncoder.from_pretrained(out)  # finite weights, so they load
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_loss_that_is_never_finite_saves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(pretrain_main, _pretrain_args(out, "--steps", "3", "--bottleneck-weight", "1e39"))
    assert code == 1
    assert "at step 1; the run stopped without saving and no checkpoint had been written yet" in (
        _one_error_line(capsys)
    )
    assert not (out / "model.safetensors").exists()
    assert not (out / "checkpoints" / "last.pt").exists()


# --- failed writes are one line ----------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_on_a_real_small_file_system(tmp_path, capsys):
    with _tmpfs(tmp_path / "small", "160k") as disk:
        out = disk / "run"
        # the decoded-image cache fills the disk first: it turns itself off, the run goes on to its save
        with pytest.warns(UserWarning, match=r"decoded-image cache is off for this run: .*no space left"):
            code = run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--save-every", "1"))
        line = _one_error_line(capsys)
        assert code == 1
        assert "no space left on the device while saving step 1; no checkpoint had been written yet" in line
        assert [p.name for p in out.rglob("*.tmp")] == []  # the partial file is gone


@pytest.mark.slow
def test_read_only_storage_is_one_line(tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "4m") as disk:
        out = disk / "run"
        assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code = run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume"))
        assert code == 2
        assert "cannot write there (Read-only file system); choose a writable folder" in _one_error_line(
            capsys
        )


def _failing_write(path: Path, exc: Exception) -> None:
    from aesop_loss.train import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError(28, "No space left on device"), "no space left on the device"),
        (OSError(30, "Read-only file system"), "the file system is read-only"),
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
            "cannot write",
        ),
    ],
    ids=["enospc", "erofs", "torch-save"],
)
def test_write_failure_reasons(tmp_path, exc, reason):
    from aesop_loss.train import WriteError

    with pytest.raises(WriteError, match=reason):
        _failing_write(tmp_path / "x.bin", exc)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_atomic_writes(tmp_path):
    with pytest.raises(ValueError, match="a bug"):
        _failing_write(tmp_path / "y.bin", ValueError("a bug, not a write failure"))
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_builds_nothing(tmp_path, user_folder, monkeypatch):
    # refused before the model is built or the data read (was timed, which a loaded machine fails)
    from aesop_loss.train import loop

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run was built before the refusal")

    monkeypatch.setattr(loop, "PretrainRun", built)
    monkeypatch.setattr(loop, "prepare_data", built)
    assert run_cli(pretrain_main, _pretrain_args(user_folder, "--steps", "1")) == 2


@pytest.mark.slow
def test_unreadable_validation_image_is_skipped(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    data = (IMAGES / "gravel.png").read_bytes()
    (val / "cut.png").write_bytes(data[: len(data) // 3])
    shutil.copy(IMAGES / "chelsea.png", val / "chelsea.png")
    out = tmp_path / "run"
    args = [a if a != "none" else str(val) for a in _pretrain_args(out, "--steps", "1")]
    with pytest.warns(UserWarning, match=r"skipping validation image .*cut\.png: cannot be decoded"):
        assert pretrain_main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("psnr_ae_hr" in r for r in records)  # validated on the readable image


# --- hostile or odd model files and names ----------------------------------------------------------------


def test_a_config_nested_100k_deep_or_huge_is_one_error(tmp_path):
    from aesop_loss import CheckpointError

    folder = tmp_path / "m"
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        AutoEncoder.from_pretrained(folder)
    (folder / "config.json").write_text('{"architecture": "AutoEncoder", "pad": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(CheckpointError, match="far more than a model's settings take"):
        AutoEncoder.from_pretrained(folder)


def test_half_a_million_extra_tensors_are_refused_before_they_are_read(tmp_path, monkeypatch):
    import aesop_loss.checkpoints as checkpoints
    from aesop_loss import CheckpointError
    from aesop_loss._io import save_safetensors

    monkeypatch.setattr(checkpoints, "_MAX_TENSORS", 100)  # 20,000 in use; a small file shows the rule
    tensors = {f"junk.{i}": torch.zeros(1) for i in range(150)}
    save_safetensors(tensors, str(tmp_path / "many.safetensors"))
    with pytest.raises(CheckpointError, match="holds 150 tensors, more than any supported network"):
        AutoEncoder.from_pretrained(tmp_path / "many.safetensors")
    torch.save(tensors, tmp_path / "many.pth")
    with pytest.raises(CheckpointError, match="holds 150 tensors"):
        AutoEncoder.from_pretrained(tmp_path / "many.pth")
    folder = tmp_path / "folder"
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(folder)
    save_safetensors(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="holds 150 tensors"):
        AutoEncoder.from_pretrained(folder)  # the header check of a model folder, too


def test_odd_names_get_one_clear_answer(tmp_path, monkeypatch):
    from aesop_loss import CheckpointError

    with pytest.raises(CheckpointError, match="not a usable file or folder name"):
        AutoEncoder.from_pretrained("a" * 5000)
    monkeypatch.chdir(tmp_path)
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(tmp_path / "demo")
    with pytest.warns(UserWarning, match="names a local folder here, which is loaded instead of the bundled"):
        ae = AutoEncoder.from_pretrained("demo")
    assert ae.num_feat == 16  # the local one, as the warning says


def test_a_training_checkpoint_loads_its_ema_weights(tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "3", "--save-every", "3")) == 0
    from_checkpoint = AutoEncoder.from_pretrained(out / "checkpoints" / "last.pt")
    exported = AutoEncoder.from_pretrained(out)  # the model folder holds the EMA weights
    assert all(torch.equal(from_checkpoint.state_dict()[k], v) for k, v in exported.state_dict().items())


# --- data, output and Hub checks before a run ------------------------------------------------------------


@pytest.mark.parametrize("tool", ["pretrain", "train_esrgan"])
def test_out_inside_data_is_refused_before_anything_is_written(tmp_path, capsys, tool):
    data = tmp_path / "photos"
    shutil.copytree(IMAGES, data)
    before = _snapshot(data)
    out = data / "run"
    if tool == "pretrain":
        code = run_cli(
            pretrain_main, [a if a != str(IMAGES) else str(data) for a in _pretrain_args(out, "--steps", "1")]
        )
    else:
        code = run_cli(_esrgan_main(), ["--smoke", "--data", str(data), "--out", str(out)])
    assert code == 2
    assert "is inside --data" in _one_error_line(capsys)
    assert _snapshot(data) == before
    assert not out.exists()


def test_the_same_data_folder_spelled_another_way_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(IMAGES.parent)
    out = tmp_path / "run"
    args = [
        a if a != str(IMAGES) else "images" for a in _pretrain_args(out, "--steps", "1", "--save-every", "1")
    ]
    assert pretrain_main(args) == 0
    again = [a if a != "images" else "./images/" for a in args]
    assert pretrain_main([*again[:-4], "--steps", "2", "--save-every", "1", "--resume"]) == 0


@pytest.mark.parametrize(
    ("repo", "needle"), [("not a repo", "not a Hub repo id"), ("org/name", "cannot be reached")]
)
def test_push_to_hub_is_checked_before_the_run(tmp_path, capsys, repo, needle):
    out = tmp_path / "run"  # HF_HUB_OFFLINE=1 in the test session: no Hub to reach
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "1", "--push-to-hub", repo)) == 2
    assert needle in _one_error_line(capsys)
    assert not out.exists()
    code = run_cli(convert_main, [str(AE_CKPT), str(tmp_path / "converted"), "--push-to-hub", repo])
    assert code == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "converted").exists()


def test_diagnose_reads_images_one_at_a_time_and_bounds_its_tile_size(capsys):
    import weakref

    from aesop_loss.diagnose import main as diagnose_main
    from aesop_loss.diagnostics import diagnose

    alive = []

    def make() -> torch.Tensor:
        img = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
        alive.append(weakref.ref(img))
        return img

    def images():  # type: ignore[no-untyped-def]
        for _ in range(3):
            assert all(ref() is None for ref in alive)  # the previous image is gone
            yield make()

    d = diagnose(AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8), images(), size=64, tiles=2)
    assert d.images == 3
    assert d.tiles == 6
    assert run_cli(diagnose_main, ["demo", "--size", "100000"]) == 2
    assert "--size 100000: expected an integer from 16 to 512" in _one_error_line(capsys)


@pytest.mark.slow
def test_diagnose_into_a_closed_pipe_keeps_its_verdict_status():
    proc = subprocess.Popen(
        [sys.executable, "-m", "aesop_loss.diagnose", "demo", "--json", "--size", "32", "--tiles", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # `| head -c 0`: the reader is gone before the report is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]  # the demo's verdict (warn), not a crash
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err


@pytest.mark.parametrize("killed", ["before-weights", "before-config"])
def test_saving_another_model_into_a_model_folder_survives_a_kill(tmp_path, monkeypatch, killed):
    import aesop_loss.hub as hub

    folder = tmp_path / "model"
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(folder)
    new = AutoEncoder(num_feat=32, num_block=2, num_grow_ch=8)
    real_write = hub.atomic_write_text
    writes: list[str] = []

    def die(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    def write_then_die(path, text):  # type: ignore[no-untyped-def]
        writes.append(text)
        if len(writes) == 2:  # the full config.json, after the weights
            raise KeyboardInterrupt
        return real_write(path, text)

    if killed == "before-weights":
        monkeypatch.setattr(hub, "save_safetensors", die)
    else:
        monkeypatch.setattr(hub, "atomic_write_text", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(folder)
    monkeypatch.undo()
    loaded = AutoEncoder.from_pretrained(folder)  # loads, and config agrees with the weights
    assert loaded.num_feat == (16 if killed == "before-weights" else 32)


@pytest.mark.filterwarnings("ignore:Loaded the bundled demo AE")
def test_train_esrgan_never_appends_through_a_linked_log(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(_esrgan_main(), ["--smoke", "--out", str(out), "--device", "cpu"]) == 0
    users = tmp_path / "diary.txt"
    users.write_text("mine\n")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(users)
    assert run_cli(_esrgan_main(), ["--smoke", "--out", str(out), "--steps", "3", "--resume"]) == 2
    assert "metrics.jsonl is a symbolic link" in _one_error_line(capsys)
    assert users.read_text() == "mine\n"


# --- a run always ends, and a plain install saves ------------------------------------------------------


_FAILING_RUN = """
import sys
from aesop_loss.train import loop

real = loop.PretrainRun.train_step


def failing(self, hr, lr):
    if self.step >= 1:  # after the workers started and a step ran
        raise RuntimeError("injected failure in the training step")
    return real(self, hr, lr)


loop.PretrainRun.train_step = failing
from aesop_loss.pretrain import console_main

sys.argv = ["pretrain", *sys.argv[1:]]
sys.exit(console_main())
"""


@pytest.mark.slow
def test_an_unexpected_error_with_workers_ends_the_run_in_one_line(tmp_path):
    # the workers ignore SIGTERM, so Python's exit-time clean-up used to wait for them forever
    args = _pretrain_args(tmp_path / "run", "--workers", "2", "--steps", "5", "--save-every", "5")
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_RUN, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: unexpected RuntimeError: injected failure in the training step (set "
        "AESOP_LOSS_TRACEBACK=1 for the traceback, and please report it)"
    ]


_WITHOUT_NUMPY = """
import sys
sys.modules["numpy"] = None  # `import numpy` fails, as in a fresh `pip install ".[train]"`
from aesop_loss import AutoEncoder
from aesop_loss.cli import run_cli
from aesop_loss.convert import main as convert_main
from aesop_loss.pretrain import main as pretrain_main

out, data = sys.argv[1], sys.argv[2]
args = ["--data", data, "--out", out + "/run", "--num-feat", "32", "--num-block", "1", "--num-grow-ch", "32",
        "--val", "none", "--batch-size", "1", "--crop", "32", "--steps", "2", "--workers", "0"]
assert run_cli(pretrain_main, args) == 0
ae = AutoEncoder.from_pretrained(out + "/run")
ae.save_pretrained(out + "/copy")
assert run_cli(convert_main, [out + "/run", out + "/trainner.safetensors", "--to", "trainner"]) == 0
back = AutoEncoder.from_pretrained(out + "/trainner.safetensors")
assert all((back.state_dict()[k] == v).all() for k, v in ae.state_dict().items())
print("saved without numpy")
"""


@pytest.mark.slow
def test_pretrain_save_pretrained_and_convert_work_without_numpy(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_NUMPY, str(tmp_path), str(IMAGES)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "saved without numpy" in proc.stdout
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_a_folder_declaring_an_extra_4_gib_tensor_is_refused_from_its_header(tmp_path, monkeypatch):
    import json as _json

    from aesop_loss import CheckpointError, hub

    folder = tmp_path / "ae"
    AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(folder)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = _json.loads(raw[8 : 8 + size])
    data = raw[8 + size :]
    header["extra.weight"] = {
        "dtype": "F32",
        "shape": [1024, 1024, 1024],
        "data_offsets": [len(data), len(data) + (4 << 30)],
    }
    text = _json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(weights, "wb") as fh:  # a sparse file: 4 GiB declared, nothing written for it
        fh.write(len(text).to_bytes(8, "little") + text + data)
        fh.truncate(8 + len(text) + len(data) + (4 << 30))
    reads = []
    monkeypatch.setattr(hub, "read_state_dict", lambda path: reads.append(path))
    with pytest.raises(
        CheckpointError, match=r"weights do not fit AutoEncoder.*unexpected keys: extra\.weight"
    ):
        AutoEncoder.from_pretrained(folder)
    assert reads == []  # refused before a tensor was read


# --- links that appear during a run, and hard links ---------------------------------------------------

_SWAP_DURING_RUN = """
import os, shutil, sys
from pathlib import Path
from aesop_loss.train import loop

out, users = Path(sys.argv[1]), Path(sys.argv[2])
real = loop.PretrainRun.train_step


def train_step(self, hr, lr):
    if self.step == 2:  # after the first save, checkpoints/ becomes a link to the user's folder
        shutil.rmtree(out / "checkpoints")
        os.symlink(users, out / "checkpoints")
    return real(self, hr, lr)


loop.PretrainRun.train_step = train_step
from aesop_loss.pretrain import console_main

sys.argv = ["pretrain", *sys.argv[3:]]
sys.exit(console_main())
"""


def _swap(action: str, out: Path, users: Path) -> None:
    """What another process does to the run's log after the first save."""
    (out / "metrics.jsonl").unlink()
    link = os.symlink if action == "metrics-symlink" else os.link
    link(users / "notes.txt", out / "metrics.jsonl")


def _users_files(tmp_path: Path) -> Path:
    users = tmp_path / "users"
    users.mkdir()
    (users / "last.pt").write_bytes(b"the user's own file")
    (users / "notes.txt").write_text("the user's notes\n")
    return users


def _untouched(users: Path) -> bool:
    return (
        (users / "last.pt").read_bytes() == b"the user's own file"
        and (users / "notes.txt").read_text() == "the user's notes\n"
        and sorted(p.name for p in users.iterdir()) == ["last.pt", "notes.txt"]
    )


@pytest.mark.slow
def test_a_link_that_appears_during_a_run_with_workers_is_never_written_through(tmp_path):
    # a real process with 2 DataLoader workers; checkpoints/ becomes a link to the user's folder
    users, out = _users_files(tmp_path), tmp_path / "run"
    args = _pretrain_args(out, "--workers", "2", "--steps", "4", "--save-every", "1", "--log-every", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _SWAP_DURING_RUN, str(out), str(users), *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "symbolic link" in errors[0]
    assert _untouched(users)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["metrics-symlink", "metrics-hardlink"])
def test_a_log_that_becomes_a_link_during_a_run_is_never_written_to(tmp_path, capsys, monkeypatch, action):
    from aesop_loss.train import loop

    users, out = _users_files(tmp_path), tmp_path / "run"
    real = loop.PretrainRun.train_step

    def train_step(self, hr, lr):  # type: ignore[no-untyped-def]
        if self.step == 2:
            _swap(action, out, users)
        return real(self, hr, lr)

    monkeypatch.setattr(loop.PretrainRun, "train_step", train_step)
    args = _pretrain_args(out, "--steps", "4", "--save-every", "1", "--log-every", "1")
    assert run_cli(pretrain_main, args) == 1
    line = _one_error_line(capsys)
    assert ("symbolic link" in line) if action.endswith("symlink") else ("hard link" in line)
    assert _untouched(users)


@pytest.mark.slow
def test_a_hard_linked_lock_is_not_truncated_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
    users = tmp_path / "users.txt"
    users.write_text("the user's file\n")
    (out / ".lock").unlink()
    os.link(users, out / ".lock")
    code = run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume"))
    assert code == 2
    assert "has another hard link" in _one_error_line(capsys)
    assert users.read_text() == "the user's file\n"


def test_a_pth_is_judged_by_its_zip_directory_before_torch_reads_it(tmp_path, monkeypatch):
    import aesop_loss.checkpoints as checkpoints
    from aesop_loss import CheckpointError

    ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
    many = {f"junk.{i}": torch.zeros(1) for i in range(150)}
    torch.save(many, tmp_path / "many.pth")
    torch.save(
        {"params_ema": ae.state_dict(), "optimizer": {"big": torch.zeros(1 << 19)}}, tmp_path / "big.pth"
    )
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(checkpoints, "_MAX_TENSORS", 100)
    with pytest.raises(CheckpointError, match=r"holds 150 tensors.*refused before reading them"):
        AutoEncoder.from_pretrained(tmp_path / "many.pth")
    monkeypatch.setattr(checkpoints, "_MAX_TENSORS", 20_000)
    monkeypatch.setattr(checkpoints, "_MAX_PTH_BYTES", 1 << 20)  # 2 GiB in use; 2 MiB of zeros shows it
    with pytest.raises(CheckpointError, match=r"declares \d MiB of tensor data.*refused before reading it"):
        AutoEncoder.from_pretrained(tmp_path / "big.pth")
    assert loads == []  # neither file was unpickled


def test_tensors_a_pth_holds_beside_the_weights_are_never_read(tmp_path):
    # a checkpoint with 256 MiB of optimizer state beside small weights: memory-mapped, only the
    # weights are read (it used to take the whole file's size in memory)
    ae = AutoEncoder(num_feat=16, num_block=1, num_grow_ch=8)
    extra = {"exp_avg": torch.ones(1 << 26)}  # 256 MiB, not zeros: a real page for every byte
    torch.save({"params_ema": ae.state_dict(), "optimizer": extra}, tmp_path / "ckpt.pth")
    del extra
    code = (  # VmHWM: this process's own peak (ru_maxrss would start at the forking parent's)
        "import re, sys\n"
        "from aesop_loss import AutoEncoder\n"
        "def peak():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "before = peak()\n"
        "AutoEncoder.from_pretrained(sys.argv[1])\n"
        "print((peak() - before) / 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ckpt.pth")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 64  # MiB of peak growth, for a 256 MiB file


def test_a_gray_ae_in_diagnose_and_an_unknown_home_are_one_line_each(tmp_path, capsys):
    from aesop_loss.diagnose import main as diagnose_main

    AutoEncoder(num_in_ch=1, num_feat=16, num_block=1, num_grow_ch=8).save_pretrained(tmp_path / "gray")
    assert run_cli(diagnose_main, [str(tmp_path / "gray"), "--size", "32", "--tiles", "1"]) == 2
    assert "is an AE of 1-channel images; diagnose measures RGB AEs" in _one_error_line(capsys)
    with pytest.warns(UserWarning, match="demo AE"):
        code = run_cli(diagnose_main, ["demo", "--teacher", str(tmp_path / "gray"), "--size", "32"])
    assert code == 2
    assert "is an AE of 1-channel images" in _one_error_line(capsys)
    for args in (
        _pretrain_args(Path("~no_such_user_here/run"), "--steps", "1"),
        ["--data", "~no_such_user_here/photos", "--out", str(tmp_path / "r"), *TINY, "--steps", "1"],
    ):
        assert run_cli(pretrain_main, args) == 2
        assert "a path starts with ~user for a user this machine does not know" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()
    assert run_cli(diagnose_main, ["~no_such_user_here/ae"]) == 2  # an AE named that way
    assert "a path starts with ~user" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [("config", "its config is not a table of settings"), ("scaler", "no scaler"),
     ("step", "step -5 is not a count of steps"), ("model", "does not fit this run")],
)  # fmt: skip
@pytest.mark.slow
def test_a_checkpoint_that_is_not_quite_a_pretraining_one_is_one_line_on_resume(
    tmp_path, capsys, damage, needle
):
    out = tmp_path / "run"
    assert pretrain_main(_pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    if damage == "config":
        state["config"] = [1, 2]
    elif damage == "scaler":
        del state["scaler"]
    elif damage == "step":
        state["step"] = -5
    else:
        state["model"] = {"w": torch.zeros(1)}
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "2", "--resume")) == 2
    assert needle in _one_error_line(capsys)
    assert ckpt.read_bytes() == before


def test_an_out_that_is_a_symlink_is_refused_naming_its_target(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert run_cli(pretrain_main, _pretrain_args(tmp_path / "link", "--steps", "1")) == 2
    line = _one_error_line(capsys)
    assert "is a symbolic link" in line
    assert str(real) in line
    assert list(real.iterdir()) == []  # nothing written through it


def test_a_failed_model_folder_write_after_the_checkpoint_says_the_checkpoint_is_there(
    tmp_path, capsys, monkeypatch
):
    from aesop_loss import hub

    def full_disk(tensors: object, path: object, metadata: object = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub, "save_safetensors", full_disk)
    out = tmp_path / "run"
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "1", "--save-every", "1")) == 1
    line = _one_error_line(capsys)
    assert "no space left on the device while writing the model files of step 1" in line
    assert f"its checkpoint {out / 'checkpoints' / 'last.pt'} was written, so --resume continues" in line
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 1


_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
from aesop_loss.pretrain import console_main
sys.argv = ["pretrain", *sys.argv[1:]]
sys.exit(console_main())
"""


@pytest.mark.slow
def test_a_file_size_limit_is_named_as_such(tmp_path):
    args = _pretrain_args(tmp_path / "run", "--steps", "1", "--save-every", "1")
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_A_FILE_SIZE_LIMIT, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "would exceed the file-size limit of 20,000 bytes (ulimit -f)" in errors[0]
    assert "unexpected pos" not in errors[0]


def test_an_ae_too_big_for_the_machine_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    from aesop_loss.train import budget

    monkeypatch.setattr(budget, "available_bytes", lambda device: 100 << 20)  # 100 MiB free
    probes = []
    monkeypatch.setattr(budget, "_saved_bytes", lambda *a: probes.append(a) or 0)  # the measuring step
    args = ["--data", str(IMAGES), "--out", str(tmp_path / "run"), "--val", "none", "--steps", "1"]
    for arch in (["--num-feat", "64", "--num-block", "23", "--num-grow-ch", "32"],  # the paper's AE: 363 MB
                 ["--decoder", "compact", "--num-feat", "256", "--num-block", "64"]):  # fmt: skip
        assert run_cli(pretrain_main, [*args, *arch]) == 2
        assert "weights, gradients, Adam state and EMA alone need about" in _one_error_line(capsys)
    assert probes == []  # refused from the architecture, before an AE was allocated
    assert not (tmp_path / "run").exists()


# --- the fourth reliability pass -------------------------------------------------------------------


@pytest.mark.slow
def test_a_planted_cache_entry_of_the_wrong_shape_in_a_worker_is_decoded_again(tmp_path):
    # a marked entry under an image's cache name holding other pixels: was a worker crash, reported
    # as "DataLoader worker is killed by signal: Killed" with a traceback and exit 1
    out = tmp_path / "run"
    assert run_cli(pretrain_main, _pretrain_args(out, "--steps", "1", "--save-every", "1")) == 0
    from aesop_loss._io import save_safetensors
    from aesop_loss.train import data as data_mod

    entries = sorted((out / ".decoded").glob("*.safetensors"))
    assert entries
    for entry in entries:
        save_safetensors(
            {"pixels": torch.zeros(3, 8, 8, dtype=torch.uint8)}, entry, metadata=data_mod._CACHE_MARK
        )
    args = _pretrain_args(out, "--steps", "3", "--workers", "2", "--resume")
    proc = subprocess.run(
        [sys.executable, "-m", "aesop_loss.pretrain", *args], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "killed by signal" not in proc.stderr


@pytest.mark.slow
def test_images_that_fail_in_the_workers_end_in_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    for i in range(4):
        Image.effect_noise((96, 96), 40 + i).convert("RGB").save(data / f"{i}.png")
        raw = (data / f"{i}.png").read_bytes()
        (data / f"{i}.png").write_bytes(raw[:200])  # the header reads; the pixels do not
    args = ["--data", str(data), "--out", str(tmp_path / "run"), *TINY_FLAGS, "--crop", "32",
            "--val", "none", "--steps", "2", "--workers", "2"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "aesop_loss.pretrain", *args], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: reading the data: none of the 4 images could be decoded (see the warnings); check the data "
        "folder."
    ]


def _sleeper() -> None:
    time.sleep(60)


def _square(x: int) -> int:
    return x * x


def test_run_cli_leaves_the_callers_processes_alone(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    daemon = ctx.Process(target=_sleeper, daemon=True)
    daemon.start()
    plain = ctx.Process(target=_sleeper)  # non-daemonic: run_cli used to wait 5 s for it
    plain.start()
    try:
        with ctx.Pool(2) as pool:
            pending = pool.map_async(_square, range(50))
            t0 = time.monotonic()
            assert run_cli(lambda argv: 0, []) == 0  # a command that succeeds
            assert time.monotonic() - t0 < 2
            assert daemon.is_alive()  # was: killed, even after success
            assert pending.get(timeout=30) == [x * x for x in range(50)]  # was: tasks lost
            assert pool.apply(_square, (7,)) == 49

        def command(argv: object) -> int:  # one that starts a worker of its own and fails
            worker = ctx.Process(target=_sleeper, daemon=True)
            worker.start()
            ours.append(worker)
            raise ValueError("bad input")

        ours: list[multiprocessing.process.BaseProcess] = []
        assert run_cli(command, []) == 2
        ours[0].join(5)
        assert not ours[0].is_alive()  # this command's own worker is ended
        assert daemon.is_alive()
    finally:
        for proc in (daemon, plain):
            proc.kill()
            proc.join()


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("aesop_loss.convert", [str(AE_CKPT), "OUT.safetensors", "--overwr"]),
        ("aesop_loss.diagnose", ["demo", "--js", "--max", "1"]),
    ],
)
def test_abbreviated_flags_are_refused_by_every_command(tmp_path, module, argv):
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert "unrecognized arguments" in proc.stderr
    assert not (tmp_path / "OUT.safetensors").exists()


def test_an_empty_data_flag_names_itself(tmp_path, capsys):
    args = ["--data", "", "--out", str(tmp_path / "run"), *TINY_FLAGS]
    assert run_cli(pretrain_main, args) == 2
    assert _one_error_line(capsys).startswith("error: --data is empty")  # was: "--out ... is inside --data"
    assert not (tmp_path / "run").exists()


def test_the_own_safetensors_writer_refuses_the_reserved_name(tmp_path):
    from aesop_loss._io import save_safetensors

    with pytest.raises(ValueError, match="__metadata__"):
        save_safetensors({"__metadata__": torch.zeros(1)}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
