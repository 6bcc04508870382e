"""Conformer encoder, chunk masks, CTC head and adapter: shapes, lengths, padding and streaming behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from entropy_asr.errors import UserError
from entropy_asr.model import (
    Adapter,
    ConformerEncoder,
    CTCHead,
    EncoderConfig,
    chunk_attention_mask,
)
from entropy_asr.model.encoder import (
    Conv2dSubsampling4,
    SelfAttention,
    rotary_tables,
    sample_chunk,
    subsampled_lengths,
)
from entropy_asr.model.params import count_parameters
from experiments.sizes import encoder_config, sizes

# A few-thousand-parameter encoder: the behaviour under test does not depend on size.
SMALL = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 5,
         "subsampling_channels": 8, "dropout": 0.0}


def small_encoder(seed: int = 0, **overrides) -> ConformerEncoder:
    torch.manual_seed(seed)
    return ConformerEncoder(EncoderConfig(**{**SMALL, **overrides})).eval()


@pytest.mark.parametrize("T", [7, 8, 9, 10, 11, 12, 13, 14, 15, 50, 101, 1000])
def test_subsampled_lengths_match_what_the_convs_produce(T):
    sub = Conv2dSubsampling4(80, 16, channels=4)
    out, out_lens = sub(torch.randn(1, T, 80), torch.tensor([T]))
    assert out.shape == (1, (T - 3) // 4, 16)
    assert out_lens.tolist() == [out.size(1)] == [subsampled_lengths(T)]


def test_subsampling_minimum_is_seven_frames():
    assert subsampled_lengths(7) == 1 and subsampled_lengths(6) == 0
    sub = Conv2dSubsampling4(80, 16, channels=4)
    with pytest.raises(ValueError, match="at least 7 input frames"):
        sub(torch.randn(1, 6, 80), torch.tensor([6]))
    # A batch long enough overall still refuses a single too-short utterance.
    with pytest.raises(ValueError, match="at least 7 input frames"):
        small_encoder()(torch.randn(2, 50, 80), torch.tensor([50, 6]))


def test_subsampled_valid_frames_never_read_padding():
    torch.manual_seed(0)
    sub = Conv2dSubsampling4(80, 16, channels=4)
    x = torch.randn(1, 40, 80)
    for L in (7, 10, 11, 23):
        y = x.clone()
        y[:, L:] = 100 * torch.randn(1, 40 - L, 80)  # garbage in the padding
        a, lens = sub(x, torch.tensor([L]))
        b, _ = sub(y, torch.tensor([L]))
        n = lens.item()
        torch.testing.assert_close(a[:, :n], b[:, :n])
        assert not torch.allclose(a[:, n], b[:, n])  # the first padded frame does read padding


def test_encoder_shapes_lengths_and_zeroed_padding():
    enc = small_encoder()
    feats = torch.randn(3, 100, 80)
    out, out_lens = enc(feats, torch.tensor([100, 57, 7]))
    assert enc.output_dim == 32
    assert out.shape == (3, 24, 32)
    assert out_lens.tolist() == [24, 13, 1]
    assert out[1, 13:].abs().max() == 0 and out[2, 1:].abs().max() == 0
    assert out[1, :13].abs().min() > 0


@pytest.mark.parametrize("chunk_size, left_chunks", [(None, -1), (2, 0), (3, -1)])
def test_very_short_utterance_gives_no_nan(chunk_size, left_chunks):
    enc = small_encoder(dropout=0.1).train()
    feats = torch.randn(2, 300, 80)
    out, _ = enc(feats, torch.tensor([300, 7]), chunk_size=chunk_size, left_chunks=left_chunks)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize("chunk_size, causal", [(None, False), (4, False), (3, True)])
def test_output_does_not_depend_on_batch_padding(chunk_size, causal):
    enc = small_encoder(causal_conv=causal)
    torch.manual_seed(1)
    short, long = torch.randn(1, 61, 80), torch.randn(1, 203, 80)
    batch = torch.cat([torch.cat([short, 5 * torch.randn(1, 142, 80)], dim=1), long])
    with torch.no_grad():
        alone, alone_lens = enc(short, torch.tensor([61]), chunk_size=chunk_size)
        batched, batch_lens = enc(batch, torch.tensor([61, 203]), chunk_size=chunk_size)
    n = alone_lens.item()
    assert batch_lens[0].item() == n == 14
    torch.testing.assert_close(batched[0, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_chunk_attention_mask_hand_written():
    one_left = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)
    all_left = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(chunk_attention_mask(6, 2, 1), one_left)
    assert torch.equal(chunk_attention_mask(6, 2, -1), all_left)
    # A last chunk shorter than chunk_size, no left context.
    no_left = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
                           dtype=torch.bool)
    assert torch.equal(chunk_attention_mask(5, 2, 0), no_left)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_attention_mask(6, 0, -1)


def test_attention_under_chunk_mask_ignores_later_chunks():
    torch.manual_seed(0)
    attn = SelfAttention(32, 2, dropout=0.0).eval()
    cos, sin = rotary_tables(12, 16, 10000.0)
    x = torch.randn(1, 12, 32)
    y = x.clone()
    y[:, 8:] = torch.randn(1, 4, 32)  # change only the last chunk (chunk size 4)
    chunked = chunk_attention_mask(12, 4, -1)
    full = torch.ones(12, 12, dtype=torch.bool)
    a, b = attn(x, chunked, cos, sin), attn(y, chunked, cos, sin)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
    # Control: with full context the same change reaches the first frame.
    assert not torch.allclose(attn(x, full, cos, sin)[:, 0], attn(y, full, cos, sin)[:, 0])


@pytest.mark.parametrize("causal", [True, False])
def test_causal_conv_with_chunk_mask_streams(causal):
    enc = small_encoder(causal_conv=causal)
    chunk = 3
    feats = torch.randn(1, 200, 80)  # 49 encoder frames
    # Encoder frame t reads input frames 4t .. 4t+6, so chunk 0..2 (frames 0..8) reads inputs 0..38.
    last_frame = 3 * chunk - 1
    first_future_input = 4 * last_frame + 7
    changed = feats.clone()
    changed[:, first_future_input:] = torch.randn(1, 200 - first_future_input, 80)
    lens = torch.tensor([200])
    with torch.no_grad():
        a, _ = enc(feats, lens, chunk_size=chunk)
        b, _ = enc(changed, lens, chunk_size=chunk)
    assert not torch.allclose(a[:, last_frame + 1], b[:, last_frame + 1])
    if causal:
        torch.testing.assert_close(a[:, : last_frame + 1], b[:, : last_frame + 1])
    else:
        # The centred depthwise conv looks conv_kernel // 2 frames ahead, across the chunk boundary.
        assert not torch.allclose(a[:, last_frame], b[:, last_frame])


def test_dynamic_chunk_sampling_is_seedable_and_in_range():
    cfg = EncoderConfig(**SMALL, dynamic_chunk=True, max_chunk=5, max_left_chunks=2, full_context_prob=0.3)

    def draws(seed):
        torch.manual_seed(seed)
        return [sample_chunk(cfg) for _ in range(300)]

    first = draws(0)
    assert first == draws(0)
    assert first != draws(1)
    chunks = [c for c, _ in first if c is not None]
    assert 0.2 < 1 - len(chunks) / len(first) < 0.4  # full-context share ~ full_context_prob
    assert set(chunks) == {1, 2, 3, 4, 5}
    assert {left for c, left in first if c is not None} == {0, 1, 2}
    assert all(left == -1 for c, left in first if c is None)
    unlimited = EncoderConfig(**SMALL, full_context_prob=0.0)
    assert all(c is not None and left == -1 for c, left in (sample_chunk(unlimited) for _ in range(50)))


def test_training_forward_uses_the_seeded_chunk_draw():
    enc = small_encoder(dynamic_chunk=True, max_chunk=4, full_context_prob=0.0)
    feats, lens = torch.randn(2, 120, 80), torch.tensor([120, 90])
    with torch.no_grad():
        full, _ = enc(feats, lens)  # eval: full context
        enc.train()
        torch.manual_seed(3)
        trained, _ = enc(feats, lens)
        torch.manual_seed(3)
        chunk_size, left = sample_chunk(enc.config)
        enc.eval()
        expected, _ = enc(feats, lens, chunk_size=chunk_size, left_chunks=left)
    torch.testing.assert_close(trained, expected)  # dropout is 0, so train == eval up to the mask
    assert not torch.allclose(trained, full)


def test_adapter_shapes_lengths_and_padding():
    torch.manual_seed(0)
    adapter = Adapter(8, 12, k=4)
    out, out_lens = adapter(torch.randn(3, 10, 8), torch.tensor([10, 5, 1]))
    assert out.shape == (3, 3, 12)  # ceil(10 / 4)
    assert out_lens.tolist() == [3, 2, 1]
    assert out[1, 2:].abs().max() == 0 and out[2, 1:].abs().max() == 0
    assert out[0].abs().min() > 0


def test_adapter_token_reads_only_its_own_frames():
    torch.manual_seed(0)
    adapter = Adapter(8, 12, k=4)
    x = torch.randn(2, 10, 8, requires_grad=True)
    lens = torch.tensor([10, 6])
    out, _ = adapter(x, lens)
    for j in range(3):
        (grad,) = torch.autograd.grad(out[0, j].sum(), x, retain_graph=True)
        reads = grad[0].abs().sum(-1) > 0  # (T,)
        assert reads.nonzero().flatten().tolist() == list(range(4 * j, min(4 * j + 4, 10)))
        assert grad[1].abs().max() == 0  # nothing leaks across the batch
    # Utterance 1 (6 frames): its last token stacks frames 4, 5 and two padded frames it must not read.
    (grad,) = torch.autograd.grad(out[1, 1].sum(), x)
    assert (grad[1].abs().sum(-1) > 0).nonzero().flatten().tolist() == [4, 5]


def test_ctc_head_shape_and_default_vocabulary():
    from entropy_asr.text.inventory import PHONES

    head = CTCHead(32)
    logits = head(torch.randn(2, 7, 32))
    assert logits.shape == (2, 7, len(PHONES)) == (2, 7, 293)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 3
    assert CTCHead(32, vocab_size=10, hidden_dim=16)(torch.randn(1, 3, 32)).shape == (1, 3, 10)


def test_the_sizes_are_the_configs_sizes():
    """experiments/models/<size>/encoder.yaml is the one definition: the configs and the benchmark read it."""
    assert sizes() == ["paper", "tiny"]
    assert count_parameters(ConformerEncoder(encoder_config("tiny")))["all"][1] == 3_111_824
    with torch.device("meta"):
        paper = ConformerEncoder(encoder_config("paper"))
    assert 550e6 < count_parameters(paper)["all"][1] < 650e6
    assert paper.config.dynamic_chunk and paper.output_dim == 1280
    enc = ConformerEncoder(encoder_config("tiny", num_layers=1, d_model=64, num_heads=2))
    assert len(enc.layers) == 1 and enc.output_dim == 64
    with pytest.raises(UserError, match=r"'huge'.*\['paper', 'tiny'\]"):
        encoder_config("huge")
    with pytest.raises(UserError, match="num_layer"):
        encoder_config("tiny", num_layer=2)


@pytest.mark.parametrize("field, value", [
    ("num_heads", 5),  # 192 % 5 != 0
    ("conv_kernel", 14),
    ("num_layers", 0),
    ("dropout", 1.0),
    ("full_context_prob", 1.5),
    ("max_left_chunks", -2),
    ("max_chunk", 0),
    ("input_dim", 4),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field if field != "num_heads" else "d_model.*num_heads"):
        EncoderConfig(**{field: value})


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    cfg = {"d_model": 32, "num_layers": 2, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "subsampling_channels": 8,
           "dropout": 0.0}
    torch.manual_seed(0)
    plain = ConformerEncoder(EncoderConfig(**cfg)).train()
    recompute = ConformerEncoder(EncoderConfig(**cfg, activation_checkpointing=True)).train()
    recompute.load_state_dict(plain.state_dict())
    feats, lens = torch.randn(2, 60, 80), torch.tensor([60, 41])
    outs, grads = [], []
    for enc in (plain, recompute):
        out, _ = enc(feats, lens)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))


def test_compiled_blocks_keep_keys_and_outputs_and_compile_once_per_kind_of_length():
    """SpeechLLM.compile_blocks (model.compile: true): checkpoints keep their keys, the loss is the eager one, and
    batches of new lengths (bucketing makes every batch a new length) do not recompile once the lengths went
    symbolic: at most one recompile, at the second length, then none."""
    from torch._dynamo.utils import counters

    from entropy_asr.model.llm import LLMConfig
    from entropy_asr.model.speech_llm import AdapterConfig, CTCHeadConfig, PromptConfig, SpeechLLM
    from tests.stage_helpers import ENC

    torch.manual_seed(0)
    llm = Path(__file__).resolve().parents[1] / "entropy_asr" / "assets" / "tiny_llm" / "llm"
    net = SpeechLLM(EncoderConfig(**{**ENC, "num_layers": 2}), CTCHeadConfig(dropout=0.0), AdapterConfig(),
                    LLMConfig(name_or_path=str(llm)), PromptConfig(system=None)).eval()
    texts = ["今天天气很好", "a short one", "我们 go home"]

    def loss(T: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(T)
        feats, lens = torch.randn(3, T, 80, generator=g), torch.tensor([T, T - 30, T - 61])
        with torch.no_grad():
            speech, speech_lens = net.speech_embeddings(feats, lens)
            return net.lm_loss(speech, speech_lens, texts)

    keys, eager = list(net.state_dict()), [loss(T) for T in (300, 420)]
    torch._dynamo.reset()
    counters.clear()
    try:
        net.compile_blocks(backend="eager")  # dynamo's graphs and guards, without Inductor's build time
        assert list(net.state_dict()) == keys
        compiled = [loss(T) for T in (300, 420)]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, compiled, strict=True))
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 2 * 4  # every block (2 encoder + 4 LLM layers) was captured
        with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile (or an eager fallback) raises
            for T in (517, 333, 610, 455):
                loss(T)
        assert counters["stats"]["unique_graphs"] == graphs  # four new lengths, no new graph
    finally:
        torch._dynamo.reset()
