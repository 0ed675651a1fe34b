"""The tasks the forgetting benchmarks train on, as forgetless overrides (data files written here).

- triage: the quickstart (ticket triage in a fixed house format; exact match).
- keigo: polite Japanese answers (the bundled keigo preference pairs' chosen side as SFT rows; chrF).
- replies: free-text customer replies (generated here, seeded: varied wording around the ticket's
  facts, so no fixed format to learn; chrF).
- orders: extracting an order as JSON (generated here, seeded; exact match).

Imported by benchmarks/frontier.py and benchmarks/sequential.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from forgetless.data.formats import builtin_path

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


def orders(n: int, seed: int) -> list[dict]:
    """Order messages and the JSON a system downstream would read."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, item, city = rng.randint(1, 40), rng.choice(ITEMS), rng.choice(CITIES)
        message = rng.choice(ASKS).format(q=q, i=item, c=city)
        answer = json.dumps({"item": item, "qty": q, "city": city})
        out.append({"instruction": "Extract the order as JSON.", "input": message, "output": answer})
    return out


def replies(n: int, seed: int) -> list[dict]:
    """A customer's complaint and a short reply in the help desk's voice: the facts (product, order,
    remedy) are fixed by the ticket, the wording varies, so only a text-similarity metric fits."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(sorted(PROBLEMS))
        ticket, remedies = PROBLEMS[kind]
        product, order = rng.choice(PRODUCTS), rng.randint(10000, 99999)
        remedy, closing = rng.choice(remedies), rng.choice(CLOSINGS)
        reply = f"{rng.choice(OPENINGS)} Your {product} from order {order} {remedy}. {closing}"
        out.append(
            {
                "instruction": "Reply to this customer in two or three sentences.",
                "input": ticket.format(p=product, o=order),
                "output": reply.strip(),
            }
        )
    return out


def keigo(split: str) -> list[dict]:
    """The keigo preference pairs as SFT rows: the prompt and its polite (chosen) answer."""
    rows = [json.loads(x) for x in builtin_path(f"keigo/{split}.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return [{"instruction": r["prompt"], "output": r["chosen"]} for r in rows]


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def overrides(name: str, data: Path) -> list[str]:
    """The forgetless overrides that point a run at task `name` (its files written under `data`)."""
    if name == "triage":
        return ["data.train=builtin:quickstart/train.jsonl", "data.validation=builtin:quickstart/test.jsonl"]
    made = {
        "keigo": (keigo("train"), keigo("test"), "chrf"),
        "replies": (replies(200, 2), replies(30, 3), "chrf"),
        "orders": (orders(200, 0), orders(30, 1), "exact_match"),
    }
    train, test, metric = made[name]
    return [
        f"data.train={_write(data / f'{name}-train.jsonl', train)}",
        f"data.validation={_write(data / f'{name}-test.jsonl', test)}",
        f"eval.metric={metric}",
    ]
