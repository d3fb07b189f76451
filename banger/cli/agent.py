"""`banger vm acp`: coding-agent tooling on a VM (the auth files it needs are synced by
banger.vm.auth at `vm create`/`vm start`)."""
from __future__ import annotations

import shlex
import subprocess
from typing import Optional

import typer

from banger.cli.common import dirs, fail
from banger.cli.vm_errors import exec_ssh

# where an agent's own installer puts it, besides the PATH sshd gives a command
AGENT_PATH = 'export PATH="$HOME/.opencode/bin:$HOME/.local/bin:$PATH"'


def _probe(cwd: Optional[str]) -> str:
    """Guest script: prints `missing`, `nocwd` or `ok DIR` (DIR: --cwd, else /root/repo, else /root)."""
    pick = (f"d={shlex.quote(cwd)}" if cwd else
            "if [ -d /root/repo ]; then d=/root/repo; else d=/root; fi")
    return (f"{AGENT_PATH}; command -v opencode >/dev/null 2>&1 || {{ echo missing; exit 0; }}; {pick}; "
            f'if [ -d "$d" ]; then echo "ok $d"; else echo nocwd; fi')


def acp(name: str = typer.Argument(..., help="The VM."),
        cwd: Optional[str] = typer.Option(None, "--cwd", help="Directory in the guest (default /root/repo, "
                                                                "else /root).")) -> None:
    """A stdio bridge to `opencode acp` in the VM (Agent Client Protocol), for an editor to run."""
    from banger.vm import access, guest
    from banger.vm.records import VMStateError

    d = dirs()
    try:
        record = guest.running(d, name)
        # input=b"": the probe's ssh must not read our stdin, where the editor's first request waits
        said = guest.run(d, record, _probe(cwd), input=b"", timeout=120).stdout.decode("utf-8", "replace").split()
    except VMStateError as exc:
        fail(str(exc))
    except subprocess.TimeoutExpired:
        fail(f"{name} did not answer over ssh within 120 s; `banger vm show {name}` says how it is")
    except FileNotFoundError:
        fail("`ssh` is not installed; install the openssh-client package")
    if said[:1] == ["missing"]:
        fail(f"{name} has no opencode on its PATH; install it in the image (e.g. npm i -g opencode-ai) "
             f"or in the VM (`banger vm ssh {name}`), then try again")
    if said[:1] != ["ok"] or len(said) < 2:
        fail(f"{name} has no directory {cwd or '/root'}; pass --cwd DIR with one that exists in the VM")
    where = " ".join(said[1:])
    argv = access.ssh_argv(d, record, ["sh", "-c", f"{AGENT_PATH}; cd {shlex.quote(where)} && exec opencode acp"],
                           tty=False)
    exec_ssh(argv)
