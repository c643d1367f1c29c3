"""The AudioLDM 2 backend honours the `TextToMusicModel` contract (`BackendContract`, and `MelDiffusionContract` for
what every mel latent-diffusion backend does), on a tiny random AudioLDM 2 pipeline (saved in diffusers' format with a
``GPT2Model`` language model, as the public checkpoints declare it, and loaded through the code path of real
checkpoints); plus what differs: the two cross-attention streams, the pipeline's own prompt encoding run per caption,
and the language model's wrapping."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AudioLDM2Pipeline
from transformers import GPT2LMHeadModel

from lightning_modules.models.audioldm2 import AudioLDM2
from tests.lightning_modules.mel_contract import DURATION, MelDiffusionContract
from tests.tiny.audioldm2 import T5_DIM, save_tiny

PROMPT = "a piece by aurora vale"


class TestAudioLDM2Contract(MelDiffusionContract):
    backend = AudioLDM2
    save_tiny = staticmethod(save_tiny)
    # the text reaches the UNet through cross-attention, not FiLM: test_groups_follow_the_streams_the_unet_really_routes
    test_text_reaches_the_unet_only_through_the_film_pathway = None

    def test_groups_follow_the_streams_the_unet_really_routes(self, model, batch):
        """Hooks on every ``attn2`` see which text each one reads: T5 states (width 32), GPT-2 embeddings (16) or
        none."""
        seen = {}
        for name, module in model.unet.named_modules():
            if name.endswith("attn2"):
                module.register_forward_hook(
                    lambda m, args, kwargs, out, name=name: seen.__setitem__(name, kwargs.get("encoder_hidden_states")),
                    with_kwargs=True)
        model.loss(batch, **model.fixed_loss_inputs(batch["id"]))
        width = {name: None if states is None else states.shape[-1] for name, states in seen.items()}
        assert sorted(set(width.values()), key=str) == [16, T5_DIM, None]
        groups = {name: {id(p) for p in params} for name, params in model.parameter_groups().items()}
        for name, module in model.unet.named_modules():
            if name in width:
                params = {id(p) for p in module.parameters()}
                stream = {16: "cross_attention_language_model",
                          T5_DIM: "cross_attention_text_encoder_2"}.get(width[name])
                assert (params <= groups["cross_attention"]) == (stream is not None), name
                assert (params <= groups["self_attention"]) == (stream is None), name
                if stream:
                    assert params <= groups[stream] and params <= groups["text_conditioning"]
                    assert {id(module.to_k.weight), id(module.to_v.weight)} <= groups["cross_attention_kv"]
                    assert id(module.to_q.weight) not in groups["cross_attention_kv"]
        assert groups["cross_attention"] == groups["cross_attention_language_model"] | groups[
            "cross_attention_text_encoder_2"]

    def test_conditioning_is_the_pipelines_own_per_prompt_encoding(self, model):
        states, mask, generated = model.pipeline.encode_prompt([PROMPT], model.unet.device, 1, True)
        conditional = model.encode_text([PROMPT])
        unconditional = model.encode_text([""], prompts=[PROMPT])
        for ours, index in ((unconditional, 0), (conditional, 1)):
            torch.testing.assert_close(ours["encoder_hidden_states_1"], states[index : index + 1])
            torch.testing.assert_close(ours["encoder_attention_mask_1"], mask[index : index + 1])
            torch.testing.assert_close(ours["encoder_hidden_states"], generated[index : index + 1])
        # the unconditional branch depends on the prompt's length, as the pipeline builds it
        assert not torch.equal(model.encode_text([""])["encoder_hidden_states"], unconditional["encoder_hidden_states"])
        # each caption is encoded alone: its conditioning is the same in any batch
        both = model.encode_text(["x", PROMPT])
        length = conditional["encoder_hidden_states_1"].shape[1]
        torch.testing.assert_close(both["encoder_hidden_states_1"][1:, :length], conditional["encoder_hidden_states_1"])
        torch.testing.assert_close(both["encoder_hidden_states"][1:], conditional["encoder_hidden_states"])

    def test_losses_do_not_depend_on_the_batch(self, model, batch):
        inputs = model.fixed_loss_inputs(batch["id"])
        together = model.loss(batch, **inputs)
        alone = model.loss({key: value[1:] for key, value in batch.items()}, **{k: v[1:] for k, v in inputs.items()})
        torch.testing.assert_close(alone, together[1:], rtol=1e-5, atol=1e-7)

    def test_generation_matches_the_library_pipeline_on_a_single_prompt(self, model):
        ours = model.generate([PROMPT], seed=3, num_inference_steps=2, guidance_scale=3.5)
        library = model.pipeline(PROMPT, audio_length_in_s=model.duration, num_inference_steps=2, guidance_scale=3.5,
                                 generator=torch.Generator().manual_seed(3), output_type="pt").audios
        torch.testing.assert_close(ours[:, 0], library, rtol=1e-3, atol=1e-4)

    def test_gpt2_model_is_wrapped_for_generation_and_saved_as_the_pipeline_expects(self, model, tiny_dir, tmp_path):
        assert json.loads((tiny_dir / "model_index.json").read_text())["language_model"][1] == "GPT2Model"
        assert isinstance(model.language_model, GPT2LMHeadModel)
        assert model.pipeline.language_model is model.language_model
        assert model.language_model.lm_head.weight is model.language_model.transformer.wte.weight
        assert not any(p.is_meta for p in model.language_model.parameters())
        model.save_pretrained(tmp_path / "saved")
        saved = json.loads((tmp_path / "saved" / "model_index.json").read_text())
        assert saved["language_model"][1] == "GPT2LMHeadModel"
        plain = AudioLDM2Pipeline.from_pretrained(tmp_path / "saved")
        for ours, theirs in zip(model.language_model.parameters(), plain.language_model.parameters(), strict=True):
            assert torch.equal(ours, theirs)

    def test_gradient_checkpointing_skips_only_the_misrouted_block_loops(self, tiny_dir):
        model = AudioLDM2(pretrained=str(tiny_dir), duration=DURATION, gradient_checkpointing=True)
        flags = {type(module).__name__: module.gradient_checkpointing for module in model.unet.modules()
                 if hasattr(module, "gradient_checkpointing")}
        assert flags["Transformer2DModel"] and flags["DownBlock2D"] and flags["UpBlock2D"]
        assert not flags["CrossAttnDownBlock2D"] and not flags["CrossAttnUpBlock2D"]


@pytest.mark.network
def test_real_checkpoint_loss_and_generation():
    model = AudioLDM2(pretrained="cvssp/audioldm2-music", duration=2.56)
    audio = torch.randn(1, model.num_samples) * 0.1
    items = {"audio": audio, "mask": torch.ones_like(audio, dtype=torch.bool), "caption": ["calm piano"], "id": ["x"]}
    assert torch.isfinite(model.loss(items, **model.fixed_loss_inputs(items["id"]))).all()
    generated = model.generate(["calm piano"], num_inference_steps=2, duration=1.0)
    assert generated.shape == (1, 1, 16000) and torch.isfinite(generated).all()
