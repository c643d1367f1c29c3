"""Unlearning modules: the template's contract and the first methods' behaviour on tiny components."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from datamodules import ForgetRetainDataModule, read_manifest
from lightning_modules.passes import NonFiniteLossError
from lightning_modules.training import TextToMusicTraining
from lightning_modules.unlearning import (
    ESD,
    EWC,
    NPO,
    ConceptAblation,
    GradientAscent,
    GradientDifference,
    NegGradPlus,
    RandomLabel,
    RetainFinetune,
    SalUn,
    SimNPO,
    UnlearningModule,
)
from tests.conftest import TINY_SAMPLES, poison_loss
from tests.lightning_modules.methods import METHODS, REQUIRED


def test_every_method_is_in_the_contract_test():
    import lightning_modules.unlearning as package

    exported = {getattr(package, name) for name in package.__all__}
    methods = {cls for cls in exported if issubclass(cls, UnlearningModule) and cls is not UnlearningModule}
    assert methods == set(METHODS)


def _step(module, batch) -> dict:
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    terms = module.objective(batch, batch)
    terms["loss"].backward()
    optimizer.step()
    return terms


def _forget_loss_after_steps(module, batch, steps: int = 3) -> tuple[float, float]:
    """The mean forget loss at fixed noise before and after `steps` optimizer steps on `batch`."""
    before = module.fixed_loss(batch).mean().item()
    for _ in range(steps):
        _step(module, batch)
    return before, module.fixed_loss(batch).mean().item()


def _data(corpus) -> ForgetRetainDataModule:
    return ForgetRetainDataModule(manifest=str(corpus.train_manifest), forget_groups=[corpus.artists[0]],
                                  batch_size=2, num_samples=TINY_SAMPLES)


def _fit(module, corpus, steps: int = 1, **trainer) -> list[dict]:
    """Train `module` for `steps` real optimizer steps on the tiny corpus; the loss terms of each step."""
    terms = []
    objective = module.objective
    module.objective = lambda forget, retain: terms.append(objective(forget, retain)) or terms[-1]
    L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, **trainer).fit(module, _data(corpus))
    return terms


@pytest.mark.parametrize("method", METHODS)
def test_one_step_changes_only_the_selected_groups(method, tiny_model, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TTM_UNLEARNING_CACHE", str(tmp_path))
    module = method(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                    parameter_groups=["cross_attention_kv"], **REQUIRED.get(method, {}))
    selected = {id(p) for p in tiny_model.parameter_groups()["cross_attention_kv"]}
    before = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    (terms,) = _fit(module, tiny_corpus)
    assert {"loss", "forget_loss", "retain_loss"} <= set(terms)
    assert all(torch.isfinite(value) for value in terms.values())
    for name, param in tiny_model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == (id(param) in selected) or method is SalUn and not changed, name


def test_gradient_ascent_raises_the_forget_loss(tiny_model, tiny_batch):
    module = GradientAscent(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    fixed_before = module.fixed_loss(tiny_batch).mean()
    for _ in range(3):
        terms = _step(module, tiny_batch)
        assert torch.equal(terms["loss"], -terms["forget_loss"])
    assert module.fixed_loss(tiny_batch).mean() > fixed_before


def test_gradient_difference_weights_its_terms(tiny_model, tiny_batch):
    module = GradientDifference(tiny_model, forget_weight=2.0, retain_weight=0.5)
    torch.manual_seed(0)
    terms = module.objective(tiny_batch, tiny_batch)
    assert torch.allclose(terms["loss"], 0.5 * terms["retain_loss"] - 2.0 * terms["forget_loss"])


def test_reference_shares_frozen_weights_copies_trained_ones_and_stays_out_of_checkpoints(tiny_model, tiny_batch):
    module = NPO(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                 parameter_groups=["cross_attention_kv"])
    reference = module.reference
    trained = {id(p) for p in module.trainable}
    for (name, param), (_, ref_param) in zip(tiny_model.named_parameters(), reference.named_parameters(), strict=True):
        assert (param is ref_param) == (id(param) not in trained), name
        assert not ref_param.requires_grad
    snapshot = [p.detach().clone() for p in reference.parameters()]
    _step(module, tiny_batch)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, reference.parameters(), strict=True))
    assert not any("reference" in key for key in module.state_dict())
    with pytest.raises(RuntimeError, match="keeps no reference"):
        _ = GradientAscent(tiny_model).reference


def test_npo_starts_at_its_closed_form_and_raises_the_forget_loss(tiny_model, tiny_batch):
    module = NPO(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.05), beta=0.5)
    assert module.objective(tiny_batch, tiny_batch)["npo_loss"].item() == pytest.approx(2 / 0.5 * math.log(2))
    before, after = _forget_loss_after_steps(module, tiny_batch)
    assert after > before
    with pytest.raises(ValueError, match="beta"):
        NPO(tiny_model, beta=0.0)


def test_simnpo_is_its_closed_form_keeps_no_reference_and_raises_the_forget_loss(tiny_model, tiny_batch):
    module = SimNPO(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.05), beta=2.0, delta=0.1,
                    forget_weight=0.5, retain_weight=0.0)
    assert not module._reference  # NPO's frozen copy is what SimNPO drops
    torch.manual_seed(0)
    losses = tiny_model.loss(tiny_batch)  # the objective's draws: the same global seed
    torch.manual_seed(0)
    terms = module.objective(tiny_batch, tiny_batch)
    expected = -(2 / 2.0) * torch.nn.functional.logsigmoid(2.0 * (losses - 0.1)).mean()
    assert terms["simnpo_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.5 * expected.item(), rel=1e-6)
    before, after = _forget_loss_after_steps(module, tiny_batch)
    assert after > before
    with pytest.raises(ValueError, match="beta"):
        SimNPO(tiny_model, beta=0.0)


def test_random_label_draws_wrong_captions_from_the_pool(tiny_model, tiny_batch):
    retain = {**tiny_batch, "caption": ["r1", "r2", "r3", "r4"]}
    module = RandomLabel(tiny_model)
    assert set(module.relabel(tiny_batch, retain)["caption"]) <= {"r1", "r2", "r3", "r4"}
    module = RandomLabel(tiny_model, captions=["only this"])
    relabeled = module.relabel(tiny_batch, retain)
    assert relabeled["caption"] == ["only this"] * 4 and torch.equal(relabeled["audio"], tiny_batch["audio"])
    with pytest.raises(ValueError, match="captions is empty"):
        RandomLabel(tiny_model, captions=[])


def test_neg_grad_plus_and_retain_finetune_weight_their_terms(tiny_model, tiny_batch):
    torch.manual_seed(0)
    terms = NegGradPlus(tiny_model, alpha=0.8).objective(tiny_batch, tiny_batch)
    assert torch.allclose(terms["loss"], 0.8 * terms["retain_loss"] - 0.2 * terms["forget_loss"])
    terms = RetainFinetune(tiny_model).objective(tiny_batch, tiny_batch)
    assert torch.equal(terms["loss"].detach(), terms["retain_loss"])
    with pytest.raises(ValueError, match="alpha"):
        NegGradPlus(tiny_model, alpha=1.5)


def test_checkpoint_holds_only_trained_parameters(tiny_model):
    module = GradientAscent(tiny_model, parameter_groups=["cross_attention"])
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    expected = {f"model.unet.{name}" for name, p in tiny_model.unet.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == expected
    assert not any(key.startswith("model.text_encoder") for key in checkpoint["state_dict"])


def test_training_drops_captions_at_the_configured_rate(tiny_model, tiny_batch, monkeypatch):
    seen = []
    monkeypatch.setattr(tiny_model, "loss",
                        lambda batch, **kw: seen.extend(batch["caption"]) or torch.zeros(len(batch["caption"])))
    module = TextToMusicTraining(tiny_model, caption_dropout=0.5)
    module.log = lambda *args, **kwargs: None
    torch.manual_seed(0)
    for _ in range(50):
        module.training_step(tiny_batch, 0)
    share = sum(caption == "" for caption in seen) / len(seen)
    assert 0.35 < share < 0.65
    with pytest.raises(ValueError, match="caption_dropout"):
        TextToMusicTraining(tiny_model, caption_dropout=1.0)


def test_esd_target_is_the_negatively_guided_reference(tiny_model, tiny_batch):
    retain = {**tiny_batch, "caption": ["a piece by"] * 4}
    losses = {}
    for eta in (0.0, 2.0):
        torch.manual_seed(0)
        losses[eta] = ESD(tiny_model, negative_guidance=eta).objective(tiny_batch, retain)["loss"]
    # at the start the model is its reference: out(c) - [u - eta (out(c) - u)] = (1 + eta) (out(c) - u)
    assert losses[2.0].item() == pytest.approx(9 * losses[0.0].item(), rel=1e-5)
    assert losses[0.0] > 0
    with pytest.raises(ValueError, match="negative_guidance"):
        ESD(tiny_model, negative_guidance=-1.0)


def test_concept_ablation_distils_toward_the_anchor_caption(tiny_model, tiny_batch):
    target = tiny_batch["caption"][0].split(" by ")[-1]
    module = ConceptAblation(tiny_model, anchor=target, target=target)  # anchor = the concept: nothing to ablate
    assert module.objective(tiny_batch, tiny_batch)["ablation_loss"].item() == pytest.approx(0.0, abs=1e-12)
    module = ConceptAblation(tiny_model, anchor="someone else", target=target)
    assert module.anchor_caption(f"calm music by {target}") == "calm music by someone else"
    assert module.objective(tiny_batch, tiny_batch)["ablation_loss"] > 0
    with pytest.raises(ValueError, match="does not contain target"):
        module.anchor_caption("a caption without the artist")
    assert ConceptAblation(tiny_model, anchor="a piece").anchor_caption("anything") == "a piece"


def test_salun_trains_only_the_salient_weights_and_keeps_its_mask_in_checkpoints(tiny_model, tiny_corpus):
    module = SalUn(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                   parameter_groups=["cross_attention"], saliency_fraction=0.25)
    before = [p.detach().clone() for p in module.trainable]
    _fit(module, tiny_corpus, steps=2)
    salient = sum(int(mask.sum()) for mask in module.mask)
    assert salient == round(0.25 * sum(p.numel() for p in module.trainable))
    for param, start, mask in zip(module.trainable, before, module.mask, strict=True):
        assert torch.equal(param[~mask], start[~mask])
    assert sum(int((param != start).sum()) for param, start in zip(module.trainable, before, strict=True)) > 0
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    resumed = SalUn(tiny_model, parameter_groups=["cross_attention"])
    resumed.on_load_checkpoint(checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(resumed.mask, module.mask, strict=True))


def test_ewc_computes_the_fisher_once_then_reads_it(tiny_model_dir, tiny_corpus, tmp_path):
    from lightning_modules.gradients import squared_gradients
    from lightning_modules.models import ToyTextToMusic

    path = tmp_path / "fisher.pt"

    def ewc(**kwargs) -> EWC:
        return EWC(ToyTextToMusic.from_pretrained(tiny_model_dir), parameter_groups=["cross_attention_kv"],
                   optimizer=lambda params: torch.optim.SGD(params, lr=0.1), fisher_path=str(path), **kwargs)

    module = ewc(ewc_weight=1e6)
    first, second = _fit(module, tiny_corpus, steps=2)
    assert first["ewc_penalty"] == 0 and second["ewc_penalty"] > 0  # theta0 is where training starts
    data = _data(tiny_corpus)
    data.setup("fit")
    retain = data.split_dataset("retain")
    loader = torch.utils.data.DataLoader(retain, batch_size=3)
    fresh = ewc()
    sums, count = squared_gradients(fresh.model.eval(), fresh.trainable, loader)
    assert count == len(retain)
    for computed, expected in zip(module.fisher, sums, strict=True):
        assert torch.allclose(computed, expected / count, rtol=1e-4, atol=1e-12)

    reader = ewc()
    reader.gradient_statistic = lambda *args, **kwargs: pytest.fail("the Fisher file was not reused")
    _fit(reader, tiny_corpus)
    assert all(torch.equal(a, b) for a, b in zip(reader.fisher, module.fisher, strict=True))

    other = ewc(fisher_draws=2)  # another recipe: the file does not match
    with pytest.raises(ValueError, match="computed for other draws"):
        _fit(other, tiny_corpus)

    path.write_bytes(path.read_bytes()[:100])  # a damaged cache (cut short): computed again, to the same values
    rebuilt = ewc()
    _fit(rebuilt, tiny_corpus)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(rebuilt.fisher, module.fisher, strict=True))
    assert path.stat().st_size > 100  # rewritten whole


@pytest.mark.parametrize("method", [NPO, ESD], ids=lambda method: method.__name__)
def test_reference_methods_train_in_bf16_true(method, tiny_model, tiny_corpus):
    """bf16-true casts the weights the reference shares with the model in place; its copies must follow."""
    module = method(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                    parameter_groups=["cross_attention_kv"])
    (terms,) = _fit(module, tiny_corpus, precision="bf16-true")
    assert all(torch.isfinite(value) for value in terms.values())
    assert {p.dtype for p in module.reference.parameters()} == {torch.bfloat16}


def _rows(batch: dict, rows: slice) -> dict:
    return {key: value[rows] for key, value in batch.items()}


def _nan_audio(batch: dict, index: int) -> dict:
    """`batch` with one NaN sample in item `index`'s audio (what a bad input or cached target gives the loss)."""
    audio = batch["audio"].clone()
    audio[index, 100] = float("nan")
    return {**batch, "audio": audio}


def test_a_non_finite_term_stops_the_training_step_naming_the_batch(tiny_model, tiny_batch):
    forget, retain = _nan_audio(_rows(tiny_batch, slice(0, 2)), 1), _rows(tiny_batch, slice(2, 4))
    module = GradientDifference(tiny_model)
    logged = []
    module.log = lambda name, *args, **kwargs: logged.append(name)
    with pytest.raises(NonFiniteLossError, match="GradientDifference training loss at step 0 is not finite") as error:
        module.training_step({"forget": forget, "retain": retain}, 0)
    message = str(error.value)
    assert "'forget_loss': nan" in message and "'loss': nan" in message and "retain_loss" not in message
    assert f"forget: {list(forget['id'])}; retain: {list(retain['id'])}" in message
    assert "input audio and cached targets" in message and "learning rate" in message and "precision" in message
    # the objective averages the batch; the step then finds the one item whose own loss is NaN
    assert f"The items whose own loss is not finite: ['{forget['id'][1]}']" in message
    assert error.value.ids == [forget["id"][1]]
    assert logged == []  # raised before anything was logged
    module.training_step({"forget": _rows(tiny_batch, slice(0, 2)), "retain": retain}, 0)  # a finite batch passes
    assert "train/loss" in logged


def test_a_non_finite_loss_leaves_the_weights_as_they_were(tiny_model, tiny_corpus, monkeypatch):
    module = GradientAscent(tiny_model, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    before = {name: param.detach().clone() for name, param in tiny_model.named_parameters()}
    every = {item.id for item in read_manifest(tiny_corpus.train_manifest)}
    poison_loss(monkeypatch, every)  # the first step's loss is NaN, whichever items it draws
    with pytest.raises(NonFiniteLossError, match="GradientAscent training loss at step 0") as error:
        _fit(module, tiny_corpus, steps=2)
    assert len(error.value.ids) == 4 and set(error.value.ids) <= every  # two forget and two retain items
    assert all(torch.equal(param, before[name]) for name, param in tiny_model.named_parameters())


def test_a_diverged_objective_with_finite_items_says_so(tiny_model, tiny_batch, monkeypatch):
    module = GradientDifference(tiny_model)
    monkeypatch.setattr(module, "objective", lambda forget, retain: {"loss": torch.tensor(float("inf"))})
    batch = {"forget": _rows(tiny_batch, slice(0, 2)), "retain": _rows(tiny_batch, slice(2, 4))}
    with pytest.raises(NonFiniteLossError, match="Every item's own loss is finite at fixed noise: the weights or the "
                                                 "objective diverged") as error:
        module.training_step(batch, 0)
    assert error.value.ids == [*batch["forget"]["id"], *batch["retain"]["id"]]


def test_training_and_validation_name_exactly_the_items_whose_loss_is_not_finite(tiny_model, tiny_batch):
    bad_id = tiny_batch["id"][2]
    module = TextToMusicTraining(tiny_model, caption_dropout=0.0)
    module.log = lambda *args, **kwargs: None
    with pytest.raises(NonFiniteLossError, match=f"TextToMusicTraining training loss at step 0 is not finite .*for 1 "
                                                 f"of 4 item\\(s\\): \\['{bad_id}'\\]") as error:
        module.training_step(_nan_audio(tiny_batch, 2), 0)
    assert error.value.ids == [bad_id]
    with pytest.raises(NonFiniteLossError, match=f"validation loss \\(forget set\\) .*\\['{bad_id}'\\]"):
        module.validation_step(_nan_audio(tiny_batch, 2), 0)
