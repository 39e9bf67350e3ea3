"""The reference policy pi_ref of the KL penalty: the policy as it was when RL started.

Three cases, cheapest first:
- LoRA with a fresh adapter (every lora_B is 0, so the adapter changes nothing yet): the same model with its
  adapter disabled. No copy.
- LoRA with an adapter that already changes the model (loaded with `adapter=`, or a peft model passed in, e.g. an
  SFT adapter): a frozen copy of that starting adapter, held as a second adapter "reference" in the same model
  (as TRL does). Disabling the adapter would pull the policy back to the BASE model instead.
- Full fine-tuning: a frozen copy of the whole model.
"""
from __future__ import annotations

import contextlib
import copy

import torch

REFERENCE_ADAPTER = "reference"


def lora_is_identity(model) -> bool:
    """True when every LoRA adapter of `model` adds nothing (all lora_B weights are exactly 0, peft's init)."""
    return all(bool((p == 0).all()) for n, p in model.named_parameters() if "lora_B" in n)


class ReferencePolicy:
    """`with ref.active() as module:` runs `module` as pi_ref. Build it once, before the first update."""

    def __init__(self, model):
        self.model = model
        self.is_peft = hasattr(model, "disable_adapter")
        self.copy = None            # full fine-tuning: the frozen model
        self.adapter_copy = False   # LoRA from a trained adapter: the "reference" adapter
        if not self.is_peft:
            self.copy = copy.deepcopy(model).requires_grad_(False).eval()
        elif not lora_is_identity(model):
            self._copy_adapter()

    def _copy_adapter(self) -> None:
        from peft import PeftType

        name = self.model.active_adapter
        cfg = self.model.peft_config[name]
        if cfg.peft_type != PeftType.LORA:
            raise ValueError(f"the reference policy of a {cfg.peft_type.value} adapter is not supported; use a LoRA "
                             f"adapter, or full fine-tuning (lora_r=0)")
        self.model.add_adapter(REFERENCE_ADAPTER, copy.deepcopy(cfg))
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if f".{REFERENCE_ADAPTER}." in n:
                    p.copy_(dict(self.model.named_parameters())[n.replace(f".{REFERENCE_ADAPTER}.", f".{name}.")])
                    p.requires_grad_(False)
        self.trained_adapter = name
        self.adapter_copy = True

    @contextlib.contextmanager
    def active(self):
        """The module to run as pi_ref, for the duration of the block (no gradients are needed from it)."""
        if self.copy is not None:
            yield self.copy
        elif self.adapter_copy:
            base = self.model.base_model
            base.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield self.model
            finally:  # set_adapter also restores requires_grad of the trained adapter's weights
                base.set_adapter(self.trained_adapter)
        else:
            with self.model.disable_adapter():
                yield self.model

    def state_dict(self) -> dict:
        """The reference adapter's weights (checkpoints): a resumed run must keep the SAME pi_ref."""
        if not self.adapter_copy:
            return {}
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters()
                if f".{REFERENCE_ADAPTER}." in n}

    def load_state_dict(self, state: dict) -> None:
        if bool(state) != self.adapter_copy:
            raise ValueError("the checkpoint's reference policy does not match this run's (one starts from a "
                             "trained adapter, the other from a fresh one): resume with the same adapter/model")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)
