"""LLM-Embedder on tiny real models: each loss against a hand computation, the LM reward against a
token-by-token computation on a tiny random Llama, the instructions, one-task batches, and the three
steps end to end on a tiny workspace (random Llama as the LM, tiny-bert as the base encoder)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from flagops.config import ConfigError, LongContextConfig, validate
from flagops.data.formats import DataError, EvalSet, Passage, TrainExample, write_beir, write_jsonl, write_train_jsonl
from flagops.longctx.base import base_model, train_tokenizer
from flagops.models.llm_reranker import save_tokenizer
from flagops.research.llm_embedder import data, losses, reward
from flagops.research.llm_embedder.evaluate import answers, top_ids
from flagops.research.llm_embedder.train import INSTRUCTIONS_FILE, OneTaskCollator, load_embedder
from flagops.steps import evaluate_llm_embedder, score_with_lm, train_llm_embedder

# ---------------------------------------------------------------- losses by hand


def _ce(row: list[float], target: int) -> float:
    """-log softmax(row)[target], written out."""
    return -(row[target] - math.log(sum(math.exp(x) for x in row)))


def _softmax(row: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in row)
    return [math.exp(x) / z for x in row]


def test_stable_distillation_matches_a_hand_computation():
    # B = 2 queries, G = 3 keys each: 6 columns. Query 0's teacher ranks its keys 1, 0, 2; query 1's 2, 1, 0.
    scores = [[2.0, 1.0, 0.5, -1.0, 0.3, 0.0], [0.2, -0.5, 1.0, 1.5, 0.7, 2.5]]
    teacher = [[-1.0, -0.5, -3.0], [-4.0, -2.0, -1.0]]
    expected = 0.0
    for step in range(3):
        terms = []
        for b in range(2):
            ranking = sorted(range(3), key=lambda k, b=b: -teacher[b][k])
            target = b * 3 + ranking[step]
            masked = [b * 3 + k for k in ranking[:step]]  # the keys ranked before this step leave the softmax
            row = [s for c, s in enumerate(scores[b]) if c not in masked]
            kept = [c for c in range(6) if c not in masked]
            weight = _softmax(teacher[b])[ranking[step]]
            terms.append(weight * _ce(row, kept.index(target)))
        expected += sum(terms) / 2  # mean over the queries, summed over the steps
    got = losses.stable_distill_loss(torch.tensor(scores), torch.tensor(teacher))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_stable_distillation_is_lowest_when_the_student_ranks_as_the_teacher():
    teacher = torch.tensor([[0.0, -1.0, -2.0]])
    agree = losses.stable_distill_loss(torch.tensor([[3.0, 2.0, 1.0]]), teacher)
    reverse = losses.stable_distill_loss(torch.tensor([[1.0, 2.0, 3.0]]), teacher)
    assert agree < reverse


def test_kl_distillation_with_both_temperatures_matches_a_hand_computation():
    student = [[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]]  # already / cosine temperature
    teacher = [[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]]
    t_teacher, t_student = 2.0, 0.5
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p = _softmax([x / t_teacher for x in t_row])
        q = _softmax([x / t_student for x in s_row])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected /= 2  # batchmean
    got = losses.kl_distill_loss(torch.tensor(student), torch.tensor(teacher), t_teacher, t_student)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_combined_loss_weights_distillation_and_contrastive():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    teacher = torch.randn(2, 3)
    scores = (q @ keys.T / 0.01).tolist()
    contrastive = (_ce(scores[0], 0) + _ce(scores[1], 3)) / 2  # each query's positive: the first of its group
    stable = losses.stable_distill_loss(torch.tensor(scores), teacher).item()
    kw = {"temperature": 0.01, "stable_distill": True}
    both = losses.llm_embedder_loss(q, keys, teacher, distill_weight=0.5, contrastive_weight=0.2, **kw)
    assert both.item() == pytest.approx(0.5 * stable + 0.2 * contrastive, rel=1e-5)
    only = losses.llm_embedder_loss(q, keys, teacher, distill_weight=1.0, contrastive_weight=0.0, **kw)
    assert only.item() == pytest.approx(stable, rel=1e-5)


def test_config_refuses_a_run_with_no_loss():
    with pytest.raises(ConfigError, match="nothing to train on"):
        validate({"llm_embedder": {"train": {"distill_weight": 0, "contrastive_weight": 0}}})


# ---------------------------------------------------------------- the LM's reward


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A random tiny Llama (hidden 16, 2 layers, 64-token window) with a BPE tokenizer, saved as train_base_lm does."""
    texts = ["json.dumps\nSerialize obj to a JSON formatted str.", "csv.reader\nReturn a reader object over lines."] * 20
    tokenizer = train_tokenizer(texts, 300)
    cfg = LongContextConfig(base_context=64, hidden_size=16, num_heads=2, num_kv_heads=1, needle_lengths=(64,))
    model = base_model(cfg, tokenizer).eval()
    path = tmp_path_factory.mktemp("lm") / "base_lm"
    model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    return path, tokenizer, model


def test_prompt_is_the_qa_template_with_only_the_answer_after_answer_start(lm):
    _, tokenizer, _ = lm
    p = reward.build_prompt(tokenizer, "json.dumps\nSerialize obj.", "Serialize to JSON", "json.dumps", 256)
    assert tokenizer.decode(p.input_ids) == "<s>Knowledge: json.dumps\nSerialize obj.\n\nQuestion: Serialize to JSON\n\nAnswer: json.dumps"
    assert tokenizer.decode(p.input_ids[p.answer_start :]) == " json.dumps"
    long = reward.build_prompt(tokenizer, "word " * 200, "what " * 50, "json.dumps", 64)
    assert len(long.input_ids) <= 64 and tokenizer.decode(long.input_ids[long.answer_start :]) == " json.dumps"


def test_answer_nll_is_the_mean_over_answer_tokens_only(lm):
    _, tokenizer, model = lm
    prompts = [
        reward.build_prompt(tokenizer, "json.dumps\nSerialize obj.", "Serialize", "json.dumps", 64),
        reward.build_prompt(tokenizer, "csv", "Return a reader", "csv.reader", 64),
    ]
    nll, exact = reward.answer_scores(model, prompts, tokenizer.pad_token_id, batch_size=2)  # padded together
    for p, got_nll, got_exact in zip(prompts, nll, exact, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p.input_ids])).logits[0]  # one unpadded sequence
        terms, hits = [], []
        for t in range(p.answer_start, len(p.input_ids)):  # token t is predicted at position t - 1
            logp = torch.log_softmax(logits[t - 1], -1)
            terms.append(-logp[p.input_ids[t]].item())
            hits.append(int(logits[t - 1].argmax()) == p.input_ids[t])
        assert got_nll == pytest.approx(sum(terms) / len(terms), rel=1e-4)
        assert got_exact == all(hits)


def test_reward_scores_every_key_and_takes_the_answer_from_the_positives_title(lm):
    _, tokenizer, model = lm
    ex = TrainExample("Serialize obj", ["json.dumps\nSerialize obj."], ["csv.reader\nRead.", "json.loads\nParse."])
    (row,) = reward.reward(model, tokenizer, 64, [ex])
    assert row.answers == ["json.dumps"] and row.task == "qa" and len(row.teacher_scores) == 3
    prompts = [reward.build_prompt(tokenizer, k, ex.query, "json.dumps", 64) for k in ex.pos + ex.neg]
    nll, _ = reward.answer_scores(model, prompts, tokenizer.pad_token_id)
    assert row.teacher_scores == pytest.approx([-x for x in nll])
    with pytest.raises(DataError, match=r"train.jsonl:1: the first positive has no title line"):
        reward.reward(model, tokenizer, 64, [TrainExample("q", ["no title"], [])], where="train.jsonl")


# ---------------------------------------------------------------- instructions, format, batches


def test_instructions_are_flagembeddings_task_config():
    assert set(data.INSTRUCTIONS) == {"qa", "convsearch", "chat", "lrlm", "icl", "tool"}
    assert data.with_instruction(["q"], "qa", is_query=True) == ["Represent this query for retrieving relevant documents: q"]
    assert data.with_instruction(["k"], "qa", is_query=False) == ["Represent this document for retrieval: k"]
    assert data.with_instruction(["k"], "tool", is_query=False) == ["Transform this tool description for retrieval: k"]
    assert data.INSTRUCTIONS["convsearch"][0] == "Encode this query and context for searching relevant passages: "


def test_one_task_batches_hold_one_task_and_full_batches():
    tasks = ["qa"] * 7 + ["chat"] * 5 + ["tool"] * 1
    batches = data.one_task_batches(tasks, 2, "seed:0")
    assert len(batches) == 3 + 2  # qa: 3 full, chat: 2 full, tool: none
    assert all(len(b) == 2 and len({tasks[i] for i in b}) == 1 for b in batches)
    assert batches == data.one_task_batches(tasks, 2, "seed:0")
    assert batches != data.one_task_batches(tasks, 2, "seed:1")


def test_read_rewarded_names_the_line_and_the_fix(tmp_path):
    good = {"query": "q", "pos": ["a"], "neg": ["b"], "teacher_scores": [-1.0, -2.0], "answers": ["x"], "task": "qa"}
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [good, {**good, "teacher_scores": [-1.0]}])
    with pytest.raises(DataError, match=r"d.jsonl:2: 'teacher_scores' has 1 scores for 2 keys"):
        data.read_rewarded(path)
    write_jsonl(path, [{**good, "task": "web"}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'task' is 'web'; use one of qa"):
        data.read_rewarded(path)


def test_collator_puts_the_batch_tasks_instructions_before_queries_and_keys():
    embedder = load_embedder("tiny-bert", validate({}).model)
    batch = OneTaskCollator(embedder)(("chat", [("hello", ["a", "b"], [-1.0, -2.0])]))
    text = embedder.tokenizer.decode(batch["q_input_ids"][0], skip_special_tokens=True)
    assert text == "embed this dialogue to find useful historical dialogues : hello"  # tiny-bert lower-cases
    key = embedder.tokenizer.decode(batch["p_input_ids"][1], skip_special_tokens=True)
    assert key.startswith("embed this historical dialogue for retrieval") and key.endswith("b")
    assert batch["teacher_scores"].tolist() == [[-1.0, -2.0]]


# ---------------------------------------------------------------- the steps on a tiny workspace

NAMES = ["json.dumps", "json.loads", "csv.reader", "csv.writer", "textwrap.wrap", "textwrap.fill", "shutil.copy", "shutil.move"]
DOCS = [
    "Serialize obj to a JSON formatted str.",
    "Deserialize a str instance containing a JSON document.",
    "Return a reader object which will iterate over lines.",
    "Return a writer object that converts data into delimited strings.",
    "Wrap a single paragraph of text, returning a list of lines.",
    "Fill a single paragraph of text, returning a new string.",
    "Copy data and mode bits, like cp src dst.",
    "Recursively move a file or directory to another location.",
]


def test_steps_score_train_and_evaluate_on_a_tiny_workspace(lm, tmp_path):
    keys = [f"{n}\n{d}" for n, d in zip(NAMES, DOCS, strict=True)]
    examples = [TrainExample(d, [keys[i]], [keys[(i + j) % 8] for j in (1, 3, 5)]) for i, d in enumerate(DOCS)]
    write_train_jsonl(tmp_path / "train.jsonl", examples)
    corpus = [Passage(n, n, d) for n, d in zip(NAMES, DOCS, strict=True)]
    write_beir(tmp_path / "eval", EvalSet(corpus, {f"q{i}": d for i, d in enumerate(DOCS)}, {f"q{i}": {NAMES[i]: 1} for i in range(8)}))
    cfg = validate(
        {
            "model": {"base": "tiny-bert", "query_max_len": 24, "passage_max_len": 32},
            "llm_embedder": {
                "enabled": True,
                "top_k": 2,
                "train": {"max_steps": 2, "batch_size": 4, "group_size": 3, "learning_rate": 1e-4, "logging_steps": 1},
            },
        }
    )
    base_lm = lm[0]
    score_with_lm.run(cfg, {"base_lm": base_lm, "train_data": tmp_path / "train.jsonl"}, {"llm_embedder_data": tmp_path / "le.jsonl"})
    rows = data.read_rewarded(tmp_path / "le.jsonl")
    assert len(rows) == 8 and all(len(r.teacher_scores) == 4 and r.task == "qa" for r in rows)
    assert rows[0].answers == ["json.dumps"]

    model_dir, curve = tmp_path / "llm_embedder", tmp_path / "loss.json"
    outputs = {"llm_embedder_model": model_dir, "llm_embedder_loss_curve": curve}
    train_llm_embedder.run(cfg, {"llm_embedder_data": tmp_path / "le.jsonl"}, outputs)
    assert json.loads((model_dir / "flagops_embedder.json").read_text())["pooling"] == "cls"
    assert json.loads((model_dir / INSTRUCTIONS_FILE).read_text())["instructions"]["qa"][1] == "Represent this document for retrieval: "
    assert len(json.loads(curve.read_text())) == 2
    trained, base = load_file(model_dir / "model.safetensors"), load_embedder("tiny-bert", cfg.model).model.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in trained if k in base)  # it trained

    out = tmp_path / "metrics" / "research_llm_embedder.json"
    inputs = {"llm_embedder_model": model_dir, "base_lm": base_lm, "eval_set": tmp_path / "eval"}
    evaluate_llm_embedder.run(cfg, inputs, {"research_llm_embedder": out})
    metrics = json.loads(out.read_text())
    systems = ("base", "llm_embedder")
    assert set(metrics) == {f"{s}/{m}" for s in systems for m in ("ndcg@10", "answer_nll", "answer_em")} | {
        "oracle/answer_nll",
        "no_retrieval/answer_nll",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert all(0 <= metrics[f"{s}/ndcg@10"] <= 1 and metrics[f"{s}/answer_nll"] > 0 for s in systems)


def test_eval_answers_are_the_gold_titles_and_top_ids_rank_by_score():
    corpus = [Passage("a", "json.dumps", "x"), Passage("b", "", "y")]
    assert answers(EvalSet(corpus, {"q": "?"}, {"q": {"a": 1}})) == {"q": "json.dumps"}
    with pytest.raises(DataError, match="has no title"):
        answers(EvalSet(corpus, {"q": "?"}, {"q": {"b": 1}}))
    assert top_ids({"q": {"a": 0.1, "b": 0.9, "c": 0.5}}, "q", 2) == ["b", "c"]
