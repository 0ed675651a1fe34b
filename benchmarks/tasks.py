"""The tasks the forgetting benchmarks train on, as forgetless overrides (data files written here).

- triage: the quickstart (ticket triage in a fixed house format; exact match).
- keigo: polite Japanese answers (the bundled keigo preference pairs' chosen side as SFT rows; chrF).
- replies: free-text customer replies (generated here, seeded: varied wording around the ticket's
  facts, so no fixed format to learn; chrF).
- orders: extracting an order as JSON (generated here, seeded; exact match).
- reasoning: short word problems from the help desk answered with the reasoning in free text (generated
  here, seeded: several ways to say each step); scored on the final number (`final_answer`).

Imported by benchmarks/frontier.py and benchmarks/sequential.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

from forgetless.data import similarity
from forgetless.data.answers import last_number
from forgetless.data.formats import builtin_path

NEAR = 0.85  # forgetless data check's near-duplicate threshold: test rows stay below it against training

ITEMS = ["blue mug", "notebook", "desk lamp", "usb cable", "water bottle", "backpack", "phone case", "tea set"]
CITIES = ["Osaka", "Lyon", "Denver", "Hamburg", "Sapporo", "Porto", "Austin", "Nagoya"]
ASKS = [
    "Hi, please send {q} {i}s to {c}.",
    "I need {q} x {i} shipped to {c}, thanks!",
    "Could you deliver {q} of the {i} to our office in {c}?",
    "Order: {i}, quantity {q}, destination {c}.",
    "We'd like {q} {i}s. Ship them to {c} please.",
]
PRODUCTS = ["Aero blender", "Nimbus router", "Trail backpack", "Lumen lamp", "Orbit watch", "Cascade kettle"]
PROBLEMS = {
    "late": ("My {p} (order {o}) has not arrived yet.", ["is on its way", "will reach you within two days"]),
    "broken": ("My {p} (order {o}) stopped working.", ["will be replaced free of charge", "can be swapped"]),
    "refund": ("I want my money back for the {p}, order {o}.", ["will be refunded in full", "is being refunded"]),
}
OPENINGS = ["Thank you for writing to us.", "Sorry for the trouble.", "Thanks for letting us know.", "We apologise."]
CLOSINGS = ["Reply here if anything else comes up.", "Have a good day.", "We are here if you need us.", ""]


def _prompt(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['input']}"  # what the leakage check compares (data/check.prompt_of)


def draw(make, n: int, seed: int, avoid: list[dict] | None = None) -> list[dict]:
    """n rows of `make(rng)`; with `avoid` (the training rows), a row whose prompt equals or nearly
    equals (Jaccard ≥ NEAR) a training prompt is drawn again, so the test split never leaks."""
    rng = random.Random(seed)
    held = [similarity.shingles(_prompt(r)) for r in avoid or []]
    out: list[dict] = []
    for _ in range(1000 * n):
        if len(out) == n:
            return out
        row = make(rng)
        sh = similarity.shingles(_prompt(row))
        if not any(similarity.jaccard(sh, other) >= NEAR for other in held):
            out.append(row)
    raise RuntimeError(f"{make.__name__}: no {n} rows below similarity {NEAR} to the training rows")


def order(rng: random.Random) -> dict:
    """An order message and the JSON a system downstream would read."""
    q, item, city = rng.randint(1, 40), rng.choice(ITEMS), rng.choice(CITIES)
    message = rng.choice(ASKS).format(q=q, i=item, c=city)
    answer = json.dumps({"item": item, "qty": q, "city": city})
    return {"instruction": "Extract the order as JSON.", "input": message, "output": answer}


def reply(rng: random.Random) -> dict:
    """A customer's complaint and a short reply in the help desk's voice: the facts (product, order,
    remedy) are fixed by the ticket, the wording varies, so only a text-similarity metric fits."""
    kind = rng.choice(sorted(PROBLEMS))
    ticket, remedies = PROBLEMS[kind]
    product, number = rng.choice(PRODUCTS), rng.randint(10000, 99999)
    remedy, closing = rng.choice(remedies), rng.choice(CLOSINGS)
    text = f"{rng.choice(OPENINGS)} Your {product} from order {number} {remedy}. {closing}"
    return {
        "instruction": "Reply to this customer in two or three sentences.",
        "input": ticket.format(p=product, o=number),
        "output": text.strip(),
    }


def reasoning(rng: random.Random) -> dict:
    """A help-desk word problem and its answer as reasoning in free text: what is computed is fixed, the
    wording of each step is drawn, and the answer ends with the number the metric reads."""
    item, kind = rng.choice(ITEMS), rng.randrange(3)
    a, b, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 9)
    if kind == 0:  # shipped in boxes, some broken
        question = f"We shipped {a} boxes of {b} {item}s and {c} arrived broken. How many arrived intact?"
        steps = [f"{a} boxes of {b} make {a * b} {item}s.", f"{a} × {b} = {a * b} {item}s were shipped."]
        end = [f"Taking away the {c} broken ones leaves {a * b - c}.", f"{a * b} − {c} broken = {a * b - c}."]
    elif kind == 1:  # a refund for part of an order
        question = f"A customer paid {a * b} dollars for {a} {item}s and returns {c % a + 1}. What is the refund?"
        steps = [f"Each {item} cost {a * b} / {a} = {b} dollars.", f"One {item} is {b} dollars ({a * b} over {a})."]
        back = c % a + 1
        end = [f"Returning {back} of them refunds {back * b}.", f"So the refund is {back} × {b} = {back * b}."]
    else:  # days until delivery
        question = f"An order waits {a} days for packing, {b} days in transit. Today is day {c}. When does it arrive?"
        steps = [f"Packing and transit take {a} + {b} = {a + b} days.", f"It needs {a + b} days in all."]
        end = [f"Starting from day {c}, it arrives on day {c + a + b}.", f"Day {c} plus {a + b} is day {c + a + b}."]
    return {
        "instruction": "Answer with your reasoning.",
        "input": question,
        "output": f"{rng.choice(steps)} {rng.choice(end)}",
    }


def final_answer(predictions: list[str], references: list[str]) -> float:
    """`eval.custom_metrics` for the reasoning task: the share of answers whose last number is the reference's."""
    hits = [
        last_number(p) is not None and last_number(p) == last_number(r)
        for p, r in zip(predictions, references, strict=True)
    ]
    return sum(hits) / max(len(hits), 1)


GENERATED = {  # task: its row maker, the (train, test) draw seeds the published tables were made with, metric
    "replies": (reply, (2, 3), "chrf"),
    "orders": (order, (0, 1), "exact_match"),
    "reasoning": (reasoning, (4, 5), "final_answer"),
}


def keigo(split: str) -> list[dict]:
    """The keigo preference pairs as SFT rows: the prompt and its polite (chosen) answer."""
    rows = [json.loads(x) for x in builtin_path(f"keigo/{split}.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return [{"instruction": r["prompt"], "output": r["chosen"]} for r in rows]


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_jsonl(path, rows)
    return str(path)


def _train_test(make, seeds: tuple[int, int]) -> tuple[list[dict], list[dict]]:
    train = draw(make, 200, seeds[0])
    return train, draw(make, 30, seeds[1], avoid=train)


def overrides(name: str, data: Path) -> list[str]:
    """The forgetless overrides that point a run at task `name` (its files written under `data`)."""
    if name == "triage":
        return ["data.train=builtin:quickstart/train.jsonl", "data.validation=builtin:quickstart/test.jsonl"]
    if name == "keigo":
        train, test, metric = keigo("train"), keigo("test"), "chrf"
    else:
        make, seeds, metric = GENERATED[name]
        train, test = _train_test(make, seeds)
    custom = ["eval.custom_metrics=[tasks:final_answer]"] if metric == "final_answer" else []
    return [
        *custom,
        f"data.train={_write(data / f'{name}-train.jsonl', train)}",
        f"data.validation={_write(data / f'{name}-test.jsonl', test)}",
        f"eval.metric={metric}",
    ]


def validation(name: str, data: Path) -> str:
    """Rows of task `name` to choose settings on, apart from the test rows `overrides` points at (and from
    the training rows): the quickstart's validation file; for the generated tasks a third draw, seeded apart
    from the test draw, that avoids both. Keigo ships train and test only: it has none."""
    if name == "triage":
        return "builtin:quickstart/validation.jsonl"
    if name == "keigo":
        raise SystemExit(
            "keigo has no validation rows (the bundled pairs ship train and test only): run the dials on "
            "triage, replies, orders or reasoning"
        )
    make, seeds, _ = GENERATED[name]
    train, test = _train_test(make, seeds)
    return _write(data / f"{name}-validation.jsonl", draw(make, 30, seeds[1] + 100, avoid=train + test))


def run_arguments(ap) -> None:
    """The arguments the forgetting benchmarks share: how long each run trains, on which model, scored on how
    many test rows, and more settings for every run."""
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--max-examples", type=int, default=30, help="test rows scored per task")
    ap.add_argument("--override", nargs="*", default=[], help="more KEY=VALUE for every run (e.g. tests' tiny sizes)")
