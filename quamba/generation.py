"""Decoding on top of the inference cache: one prefill call, then one recurrent step per new token.

    generate(model, input_ids [B, L], n) -> [B, L + n']   (n' <= n: stops once every row has emitted eos)
      prefill   model(input_ids, cache)        -> logits of the last position [B, V]
      per token choose(logits) -> streamer(token [B]) -> model(token [B, 1], cache)   (a recurrent step)

Choosing a token follows the usual order: mask the padded vocab columns -> repetition penalty -> greedy argmax when
temperature == 0, else temperature -> top-k -> top-p -> min-p -> a draw from a seeded ``torch.Generator``.

``CUDAGraphStep`` captures the decode step once as a CUDA graph (static token input, static cache tensors updated in
place) and replays it per token. ``ChatSession`` keeps one recurrent state across chat turns and feeds each turn's
new tokens only.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

import torch

from .errors import QuambaError
from .modules.scan import Int8State

Streamer = Callable[[torch.Tensor], "bool | None"]  # new tokens [B] -> True to stop every row now


# ---- choosing the next token -----------------------------------------------------------------------------------
def _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty):
    if int(max_new_tokens) < 0:
        raise QuambaError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise QuambaError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise QuambaError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise QuambaError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise QuambaError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty <= 0:
        raise QuambaError(f"repetition_penalty must be > 0 (1 is off), got {repetition_penalty}")


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """logits [B, V_padded] -> the same with columns >= vocab_size at -inf (rows of the padded embedding that no
    token maps to must never be chosen)."""
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits = logits.clone()  # never write into the model's output (a CUDA graph's static buffer)
        logits[:, vocab_size:] = float("-inf")
    return logits


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens already in the row (``seen`` [B, V] bool) divide a positive logit by ``penalty``
    and multiply a negative one, so that penalty > 1 always makes them less likely."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """logits [B, V] float -> logits with the tokens outside top-k / the top-p nucleus / below min_p * p_max at -inf.
    The most likely token always survives."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > top_p  # mass before this token already exceeds top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p is not None and min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def choose_next(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None, min_p=None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] float32 (already masked/penalised) -> next tokens [B] int64: argmax when temperature == 0,
    else one draw per row from the filtered, tempered distribution."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / temperature, top_k, top_p, min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


# ---- cache state helpers (a state is a tensor, or an Int8State holding q and scale) -------------------------------
def _state_tensors(state) -> list[torch.Tensor]:
    return [state.q, state.scale] if isinstance(state, Int8State) else [state]


def _copy_state(dst, src, row: int | None = None):
    """Copy ``src`` into ``dst`` in place (all rows, or ``src``'s single row into row ``row`` of ``dst``)."""
    for d, s in zip(_state_tensors(dst), _state_tensors(src)):
        (d if row is None else d[row:row + 1]).copy_(s)


def copy_cache(dst, src, row: int | None = None):
    """Copy every layer's conv and SSM state of InferenceCache ``src`` into ``dst`` in place; with ``row``, ``src``
    is a batch-1 cache written into that row of ``dst``."""
    for i in range(len(dst.conv_states)):
        _copy_state(dst.conv_states[i], src.conv_states[i], row)
        _copy_state(dst.ssm_states[i], src.ssm_states[i], row)
    if row is None:
        dst.seqlen_offset = src.seqlen_offset


# ---- CUDA graph of one decode step ------------------------------------------------------------------------------
class CUDAGraphStep:
    """One decode step of ``model`` for a fixed batch size, captured as a CUDA graph and replayed per token.

    The graph reads a static token tensor [B, 1] and updates a static cache whose tensors never change identity:
    after the step, any state a mixer *reassigned* (a new tensor, or an Int8State's new q/scale) is copied back into
    the static tensor inside the captured region, so replays keep advancing the same memory. ``load(cache)`` copies a
    prefilled cache in, ``store(cache)`` copies the state back out. Untested on GPU in CI (no GPU there).
    """

    def __init__(self, model, batch_size: int, warmup: int = 2):
        device = model.device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise QuambaError(f"cache_graph (CUDA-graph decoding) needs a CUDA device; the model is on {device}: "
                              "drop --cache-graph or use --device cuda")
        self.model, self.batch_size = model, batch_size
        self.cache = model.allocate_cache(batch_size)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self._conv = list(self.cache.conv_states)
        self._ssm = list(self.cache.ssm_states)
        self._ssm_tensors = [_state_tensors(s) for s in self._ssm]
        with torch.no_grad():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # compile kernels, settle the allocator, outside the capture
                for _ in range(warmup):
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()  # [B, V] static output
        self.cache.seqlen_offset = 0

    def _step(self) -> torch.Tensor:
        logits = self.model(self.tokens, self.cache).logits[:, -1]
        self._pin()
        return logits

    def _pin(self):
        """Copy any reassigned state into the static tensors and point the cache back at them."""
        c = self.cache
        for i, conv in enumerate(self._conv):
            if c.conv_states[i] is not conv:
                conv.copy_(c.conv_states[i])
                c.conv_states[i] = conv
        for i, (ssm, static) in enumerate(zip(self._ssm, self._ssm_tensors)):
            for d, s in zip(static, _state_tensors(c.ssm_states[i])):
                if s is not d:
                    d.copy_(s)
            if isinstance(ssm, Int8State):
                ssm.q, ssm.scale = static
            c.ssm_states[i] = ssm

    def load(self, cache):
        """Start decoding from ``cache`` (e.g. just prefilled): copy its state into the static cache."""
        copy_cache(self.cache, cache)

    def store(self, cache):
        """Copy the static state back into ``cache`` (so a caller's cache reflects the tokens decoded here)."""
        copy_cache(cache, self.cache)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] -> logits [B, V] of the next position (a view into the static output: read it before the next
        call)."""
        self.tokens.copy_(tokens.view(-1, 1))
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.logits


# ---- generate -----------------------------------------------------------------------------------------------------
def _prefill(model, input_ids, cache):
    """Tensor prompts: one call. A list of prompts of different lengths: each row prefilled on its own (a batch-1
    cache copied into its row), exact where left padding would feed pad tokens into the recurrent state."""
    if isinstance(input_ids, torch.Tensor):
        return model(input_ids, cache, num_last_tokens=1).logits[:, -1]
    rows = []
    for i, ids in enumerate(input_ids):
        one = model.allocate_cache(1)
        rows.append(model(ids[None], one, num_last_tokens=1).logits[:, -1])
        copy_cache(cache, one, row=i)
    cache.seqlen_offset = max(len(ids) for ids in input_ids)
    return torch.cat(rows)


def _as_prompts(input_ids, device):
    """A LongTensor [B, L] stays as is; a list of 1-D sequences becomes a list of 1-D LongTensors on ``device``."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise QuambaError(f"input_ids must be [batch, length>0], got shape {tuple(input_ids.shape)}")
        return input_ids.to(device)
    rows = [torch.as_tensor(r, dtype=torch.long, device=device).reshape(-1) for r in input_ids]
    if not rows or any(r.numel() == 0 for r in rows):
        raise QuambaError("every prompt must have at least one token")
    return rows


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, repetition_penalty: float = 1.0,
             eos_token_id: int | None = None, seed: int | None = None, streamer: Streamer | None = None,
             cache_graph: "bool | CUDAGraphStep" = False, *, pad_token_id: int | None = None,
             vocab_size: int | None = None, cache=None):
    """Generate up to ``max_new_tokens`` tokens after each prompt.

    input_ids: LongTensor [B, L], or a list of B 1-D token sequences of different lengths (each row is prefilled on
    its own, no padding enters the state). temperature 0 is greedy; otherwise sampling with optional top_k, top_p,
    min_p, from ``torch.Generator().manual_seed(seed)`` (same seed, same tokens; None: torch's global RNG).
    repetition_penalty > 1 discourages tokens already in the row. Rows stop independently at ``eos_token_id`` and
    then emit ``pad_token_id`` (default: eos); the loop ends when every row has stopped. ``streamer(tokens [B])`` is
    called once per new position and may return True to stop all rows. ``vocab_size`` (default: the model config's)
    masks the padded vocab columns. ``cache``: continue from (and update) this InferenceCache instead of a fresh
    one. ``cache_graph``: True or a ``CUDAGraphStep`` to replay the decode step as a CUDA graph (CUDA only).

    Returns LongTensor [B, L + n] (prompt + new tokens) for tensor input, else a list of 1-D LongTensors, each
    prompt + its new tokens up to and including its eos.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    prompts = _as_prompts(input_ids, model.device)
    batch = prompts.shape[0] if isinstance(prompts, torch.Tensor) else len(prompts)
    vocab_size = model.config.vocab_size if vocab_size is None else vocab_size
    pad = eos_token_id if pad_token_id is None else pad_token_id
    graph = cache_graph if isinstance(cache_graph, CUDAGraphStep) else (CUDAGraphStep(model, batch) if cache_graph else None)
    if graph is not None and graph.batch_size != batch:
        raise QuambaError(f"the CUDA graph was captured for batch {graph.batch_size}, not {batch}")
    if cache is None:
        cache = model.allocate_cache(batch)
    elif not isinstance(prompts, torch.Tensor):
        raise QuambaError("continuing from a cache needs the new tokens as one LongTensor [B, L], not a list of rows")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))

    logits = _prefill(model, prompts, cache)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(batch, logits.shape[-1], dtype=torch.bool, device=logits.device)
        for i in range(batch):
            seen[i, prompts[i]] = True
    if graph is not None:
        graph.load(cache)
    step = graph if graph is not None else (lambda tok: model(tok[:, None], cache).logits[:, -1])

    new, done = [], torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for i in range(max_new_tokens):
        scores = mask_padded_vocab(logits.float(), vocab_size)
        if seen is not None:
            scores = apply_repetition_penalty(scores, seen, repetition_penalty)
        tok = choose_next(scores, temperature, top_k, top_p, min_p, generator)
        if eos_token_id is not None:
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            done |= tok == eos_token_id
        new.append(tok)
        if seen is not None:
            seen[torch.arange(batch, device=tok.device), tok] = True
        stop = bool(streamer(tok)) if streamer is not None else False
        if stop or i == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
            break
        logits = step(tok)
    if graph is not None and len(new) > 1:
        graph.store(cache)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return _assemble(prompts, new, eos_token_id)


def _assemble(prompts, new: list[torch.Tensor], eos_token_id):
    gen = torch.stack(new, dim=1) if new else None
    if isinstance(prompts, torch.Tensor):
        return prompts if gen is None else torch.cat([prompts, gen.to(prompts.device)], dim=1)
    out = []
    for i, p in enumerate(prompts):
        row = gen[i] if gen is not None else p[:0]
        if eos_token_id is not None and (row == eos_token_id).any():
            row = row[: int((row == eos_token_id).nonzero()[0]) + 1]
        out.append(torch.cat([p, row]))
    return out


def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None) -> torch.Tensor:
    """input_ids: [B, L] -> [B, L + n] with n <= max_new_tokens greedy tokens (stops when all rows hit eos; a row
    that has stopped repeats eos). As it always has (and as the eval harness's ``greedy_continue``), the argmax runs
    over every column of the padded head; ``generate`` masks the padded columns by default."""
    return generate(model, input_ids, max_new_tokens, temperature=0.0, eos_token_id=eos_token_id,
                    vocab_size=model.config.padded_vocab_size)


# ---- streaming text -----------------------------------------------------------------------------------------------
class TextStreamer:
    """A streamer that writes row ``row``'s decoded text to ``out`` as it grows.

    Text is decoded from all tokens so far (byte-level tokens only make sense together); a trailing partial UTF-8
    character is held back, and so is any tail that could be the start of a stop string. Returns True (stop) once a
    stop string appears; ``text`` is the reply cut before it.
    """

    def __init__(self, tokenizer, out=None, stop: Sequence[str] = (), row: int = 0):
        self.tokenizer, self.out, self.stop, self.row = tokenizer, out if out is not None else sys.stdout, list(stop), row
        self.ids: list[int] = []
        self.printed = 0
        self.stopped = False

    @property
    def raw_text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    @property
    def text(self) -> str:
        raw = self.raw_text
        cut = min([raw.find(s) for s in self.stop if s in raw], default=len(raw))
        return raw[:cut]

    def _flush(self, final: bool):
        text = self.text
        end = len(text)
        if not final and not self.stopped:
            end -= max((len(s) - 1 for s in self.stop), default=0)
            while end > self.printed and text[end - 1] == "\ufffd":
                end -= 1
        if end > self.printed:
            self.out.write(text[self.printed:end])
            self.out.flush()
            self.printed = end

    def __call__(self, tokens: torch.Tensor) -> bool:
        if self.stopped:
            return True
        self.ids.append(int(tokens[self.row]))
        self.stopped = any(s in self.raw_text for s in self.stop)
        self._flush(final=False)
        return self.stopped

    def end(self):
        self._flush(final=True)


# ---- chat -------------------------------------------------------------------------------------------------------------
PLAIN_STOP = "\nUser:"


class ChatSession:
    """A conversation with one recurrent state kept across turns: each turn feeds only its own new tokens (the new
    user turn, plus the last reply token the model sampled but has not read yet), never the history.

    The tokenizer's chat template is used when it has one, else a plain-text one ("User: ...\\nAssistant:", the
    reply stops at eos or at a new "\\nUser:" line). The new turn's text is the part of the rendered conversation
    after what the model has already read; when the template renders earlier turns differently from how the model
    wrote them, the new turn is rendered on its own instead. ``turns`` records, per turn, the tokens fed and
    generated.
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 256,
                 cache_graph: bool = False, **sampling):
        self.model, self.tokenizer, self.max_new_tokens, self.sampling = model, tokenizer, max_new_tokens, sampling
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        self.system = system
        self.graph = CUDAGraphStep(model, 1) if cache_graph else None
        self.reset()

    def reset(self):
        self.cache = self.model.allocate_cache(1)
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self.seen = ""  # the text the model has read (pending tokens included: they are fed next turn)
        self.pending: list[int] = []
        self.turns: list[dict] = []

    def render(self, messages: list[dict]) -> str:
        """The conversation as text, ending with the assistant's cue."""
        if self.templated:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts, prev = [], None
        for m in messages:
            if m["role"] == "system":
                parts.append(f"{m['content']}\n\n")
            elif m["role"] == "user":  # a reply is followed by a newline before the next user line
                parts.append(("\n" if prev == "assistant" else "") + f"User: {m['content']}\nAssistant:")
            else:
                parts.append(m["content"])  # the reply exactly as generated (it usually starts with a space)
            prev = m["role"]
        return "".join(parts)

    def _new_turn_text(self, message: str) -> tuple[str, str]:
        target = self.render(self.messages + [{"role": "user", "content": message}])
        if target.startswith(self.seen):
            return target[len(self.seen):], "continued"
        alone = [{"role": "user", "content": message}]
        text = self.render(alone) if self.templated else "\n" + self.render(alone)
        return text, "new turn"

    def send(self, message: str, streamer: Streamer | None = None) -> str:
        """Feed the user's ``message``, generate the reply (streamed through ``streamer``), return its text."""
        text, how = self._new_turn_text(message)
        ids = self.pending + self.tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        eos = self.tokenizer.eos_token_id
        out = generate(self.model, prompt, self.max_new_tokens, eos_token_id=eos, streamer=streamer,
                       cache_graph=self.graph or False, vocab_size=len(self.tokenizer), cache=self.cache,
                       **self.sampling)
        reply_ids = out[0, len(ids):].tolist()
        raw = self.tokenizer.decode(reply_ids, skip_special_tokens=True)
        reply = raw.split(PLAIN_STOP)[0] if not self.templated else raw
        # The last sampled token has not been read by the model: it opens the next turn. In plain text an eos is
        # dropped instead (it would mark a document boundary, not the end of a reply).
        self.pending = reply_ids[-1:]
        if not self.templated and self.pending == [eos]:
            self.pending = []
        fed_text = self.tokenizer.decode(reply_ids if self.pending else reply_ids[:-1], skip_special_tokens=not self.templated)
        self.seen += text + fed_text
        self.messages += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        self.turns.append({"fed": len(ids), "generated": len(reply_ids), "how": how})
        return reply
