"""Batched debugfs runs with real error checking.

debugfs exits 0 even when its commands fail; it reports failures as text. We run one batch per
call with stdout unbuffered (so each message lands right after the echo of the command that
caused it), split the output into per-command blocks, and treat any unexpected text after a
write command as that command's failure.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from banger.core.procs import dies_with_parent

PROMPT = "debugfs: "
# Lines debugfs prints on success for commands that change the image.
BENIGN = re.compile(r"^(Allocated inode: \d+|debugfs \d[\d.]* \(.*\)|\s*Using EXT2FS Library.*)$")
# Commands that print nothing when they succeed (cd included: a failed cd would send what
# follows elsewhere).
SILENT_COMMANDS = {"cd", "sif", "set_inode_field", "write", "mkdir", "symlink", "mknod", "ea_set",
                  "ea_rm", "link", "ln", "unlink", "rm", "rmdir", "kill_file", "set_super_value",
                  "ssv", "copy_inode", "punch", "truncate", "fallocate", "dirty", "ea_get"}


class DebugfsError(RuntimeError):
    pass


@dataclass
class Block:
    command: str
    output: list[str]


def run(image: Path, commands: list[str], write: bool = False,
        env: dict[str, str] | None = None) -> list[Block]:
    """Run `commands` in one debugfs session; raise DebugfsError naming the first failed one."""
    if not Path(image).is_file():
        raise DebugfsError(f"debugfs: no image at {image}")
    for cmd in commands:
        if "\n" in cmd:
            raise DebugfsError(f"debugfs command contains a newline: {cmd!r}")
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", str(image)]
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-o0", *argv]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="surrogateescape",
                          env={**os.environ, **env} if env else None, preexec_fn=dies_with_parent())
    preamble, _, _ = proc.stdout.partition(PROMPT)
    opened_badly = [line for line in preamble.splitlines() if line.strip() and not BENIGN.match(line)]
    if proc.returncode != 0 or opened_badly:
        detail = (opened_badly or proc.stdout.strip().splitlines() or ["no output"])[0]
        raise DebugfsError(f"debugfs could not open {image}: {detail.strip()}")
    blocks = parse(proc.stdout)
    if len(blocks) != len(commands):
        raise DebugfsError(f"debugfs ran {len(blocks)} of {len(commands)} commands on {image}")
    check(blocks)
    return blocks


def quote(text: str) -> str:
    """One debugfs argument: double quotes, a literal quote doubled (debugfs' ss parser)."""
    if "\n" in text or "\r" in text or "\0" in text:
        raise DebugfsError(f"path component {text!r} contains a newline; ext4 images cannot be built from it with debugfs")
    return '"' + text.replace('"', '""') + '"'


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    for line in text.splitlines():
        if line.startswith(PROMPT):
            blocks.append(Block(line[len(PROMPT):], []))
        elif blocks:
            blocks[-1].output.append(line)
    return blocks


def check(blocks: list[Block]) -> None:
    for block in blocks:
        verb = block.command.split(" ", 1)[0]
        if verb in SILENT_COMMANDS:
            bad = [line for line in block.output if line.strip() and not BENIGN.match(line)]
            if bad:
                raise DebugfsError(f"debugfs `{block.command}` failed: {bad[0].strip()}")
