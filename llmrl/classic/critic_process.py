"""The critic's half of each PPO update in a second process (`PPOConfig.critic_process`).

The actor and the critic share no parameter, so the gradient of  L_policy - ent_coef H + vf_coef L_value  is
the two halves' gradients side by side. `CriticProcess` computes the critic's half (the forward and backward of
vf_coef L_value) in a child process while the trainer computes the actor's half, so two CPU cores work at once.
(A thread would not do: both halves are short eager-PyTorch ops whose Python overhead serializes on the GIL.)

The critic's weights and gradient, the rollout's observations, values and value targets, and the minibatch row
order live in memory-mapped files in /dev/shm that both processes map; per update the trainer copies the critic's
weights in, sends the minibatch's row range down a pipe, and copies the gradient out when the child answers with
L_value. The child runs the same ops on the same data at the same memory alignment, so the update is identical
to one backward of the whole loss.

The child is a fresh interpreter running `child_main` (so it does not re-import the user's script); it needs a
second or two to import torch. Until it reports ready the trainer computes the critic's half itself (the same
gradients): nothing waits for it, and short runs barely use it.
"""
from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from typing import Callable

import torch
from torch import Tensor

from .common import view_parameters
from .policies import Critic

# critic_backward(critic, obs, returns, old_values, cfg): forward and backward of the critic's half of the loss,
# returns L_value; a module-level function, so that the child can unpickle it
CriticBackward = Callable[..., Tensor]


def _buffers(directory: str, sizes: dict[str, tuple[int, torch.dtype]]) -> dict[str, Tensor]:
    """1-D tensors on the files directory/NAME, shared with every process that maps them."""
    return {name: torch.from_file(os.path.join(directory, name), shared=True, size=n, dtype=dtype)
            for name, (n, dtype) in sizes.items()}


class CriticProcess:
    """Runs the critic's half of PPO updates in a child process; see the module docstring.

    Constructing it starts the interpreter (do it early: its start-up then overlaps the trainer's); `setup` shares
    the buffers; then per rollout `load`, per epoch `shuffle` (minibatches), and per update `start` + `wait`.
    """

    def __init__(self):
        r_cmd, w_cmd = os.pipe()  # trainer -> child
        r_rep, w_rep = os.pipe()  # child -> trainer
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the trainer's imports
        entry = "import sys; from llmrl.classic.critic_process import child_main; child_main(*map(int, sys.argv[1:]))"
        self.process = subprocess.Popen([sys.executable, "-c", entry, str(r_cmd), str(w_rep)],
                                        pass_fds=(r_cmd, w_rep), env=env)
        os.close(r_cmd)
        os.close(w_rep)
        self.commands, self.replies = Connection(w_cmd, readable=False), Connection(r_rep, writable=False)
        self.directory: str | None = None
        self.ready = False
        self.updates = 0  # critic halves computed by the child

    def setup(self, cfg, critic: Critic, flat: torch.nn.Parameter, offset: int, rows: int,
              obs_shape: tuple[int, ...], critic_backward: CriticBackward) -> None:
        """Share the buffers: the critic's weights are flat[offset:] (see `flat_parameters`), the rollout has
        `rows` rows of observations of shape `obs_shape`."""
        self.directory = tempfile.mkdtemp(prefix="llmrl-critic-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                          else None)
        obs_numel = int(torch.Size(obs_shape).numel())
        # the weights and gradient keep their offset in the flat buffer: the same memory alignment, the same kernels
        sizes = {"params": (flat.numel(), torch.float32), "grad": (flat.numel(), torch.float32),
                 "obs": (rows * obs_numel, torch.float32), "values": (rows, torch.float32),
                 "returns": (rows, torch.float32), "perm": (rows, torch.long)}
        self.shared = _buffers(self.directory, sizes)
        self.shared["obs"] = self.shared["obs"].view(rows, *obs_shape)
        # the critic's slices: its weights are copied in before each update, its gradient copied out after
        self.weights, self.shared_weights = flat.data[offset:], self.shared["params"][offset:]
        self.grad, self.shared_grad = flat.grad[offset:], self.shared["grad"][offset:]
        self.commands.send_bytes(pickle.dumps({"cfg": cfg, "observation_space": critic.observation_space,
                                               "critic_backward": critic_backward, "directory": self.directory,
                                               "sizes": sizes, "offset": offset, "obs_shape": obs_shape}))

    def load(self, obs: Tensor, values: Tensor, returns: Tensor) -> None:
        """This rollout's flat observations, values V_old(s_t) and value targets."""
        for name, t in (("obs", obs), ("values", values), ("returns", returns)):
            self.shared[name].copy_(t)

    def shuffle(self, perm: Tensor) -> None:
        """This epoch's row order: minibatch (lo, hi) is rows perm[lo:hi]."""
        self.shared["perm"].copy_(perm)

    def _receive(self) -> bytes:
        try:
            msg = self.replies.recv_bytes()
        except EOFError:
            raise RuntimeError(f"the critic process exited (exit code {self.process.poll()}; its error is above); "
                               "set critic_process=False to compute the critic's half in this process") from None
        if msg.startswith(b"error:"):
            raise RuntimeError("the critic process failed:\n" + msg[6:].decode())
        return msg

    def start(self, rows: tuple[int, int] | None) -> bool:
        """Start the critic's half on minibatch rows perm[lo:hi] (None: every row) with the current weights;
        False (nothing started) while the child is still starting: the caller computes that half itself."""
        if not self.ready:
            if not self.replies.poll():
                return False
            self._receive()  # b"ready": both processes have mapped the buffers, so their files can go
            self.ready = True
            shutil.rmtree(self.directory, ignore_errors=True)
        self.shared_weights.copy_(self.weights)
        self.commands.send_bytes(struct.pack("qq", *(rows if rows is not None else (-1, -1))))
        return True

    def wait(self) -> float:
        """Wait for the child, put its gradient into the critic's slice of flat.grad; returns L_value."""
        (v_loss,) = struct.unpack("d", self._receive())
        self.grad.copy_(self.shared_grad)
        self.updates += 1
        return v_loss

    def close(self) -> None:
        """Stop the child (one still starting is killed: it holds nothing) and remove the shared files."""
        if self.ready:
            try:
                self.commands.send_bytes(b"")
            except OSError:
                pass
        else:
            self.process.kill()
        self.commands.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _serve(commands: Connection, replies: Connection) -> None:
    """The child: map the buffers, then on each (lo, hi) compute the forward and backward of vf_coef L_value on
    rows perm[lo:hi] (every row for lo < 0) into the shared gradient and reply with L_value; b"" stops it."""
    init = pickle.loads(commands.recv_bytes())
    cfg, start = init["cfg"], init["offset"]
    torch.set_num_threads(cfg.torch_threads)
    shared = _buffers(init["directory"], init["sizes"])
    obs = shared["obs"].view(-1, *init["obs_shape"])
    critic = Critic(init["observation_space"], cfg.hidden_sizes, cfg.activation)
    view_parameters(critic.parameters(), shared["params"], shared["grad"], start)  # at their flat-buffer offsets
    replies.send_bytes(b"ready")
    while msg := commands.recv_bytes():
        lo, hi = struct.unpack("qq", msg)
        rows = slice(None) if lo < 0 else shared["perm"][lo:hi]
        shared["grad"][start:].zero_()
        v_loss = init["critic_backward"](critic, obs[rows], shared["returns"][rows], shared["values"][rows], cfg)
        replies.send_bytes(struct.pack("d", v_loss.item()))


def child_main(command_fd: int, reply_fd: int) -> None:
    """Entry point of the child process (see CriticProcess)."""
    commands, replies = Connection(command_fd, writable=False), Connection(reply_fd, readable=False)
    try:
        _serve(commands, replies)
    except EOFError:  # the trainer is gone
        pass
    except Exception:  # noqa: BLE001 (reported to the trainer, which raises it)
        try:
            replies.send_bytes(b"error:" + traceback.format_exc().encode())
        except OSError:
            pass
