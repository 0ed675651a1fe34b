"""Write the bundled quickstart task: support-desk ticket triage in a fixed house format.

Each row is a customer message; the answer is one line in the Acme help desk's house format:

    category: <billing|shipping|account|technical|refund> | priority: <high|normal|low> | order: <digits|none>

The category follows what the customer is asking about, the priority follows urgency cues
("urgent", "no rush", ...), and the order number is copied from the message in whatever way the
customer wrote it (#48213, ORD-48213, order 48213), or "none". The base model does not know
this format, so its exact-match score before training is 0.

Three splits: train (400 rows), validation (60, for choosing settings) and test (60, the rows the
README's numbers are measured on). The held-out splits are disjoint from training and from each other,
exactly and nearly: a held-out ticket whose prompt has a Jaccard similarity of 0.85 or more (the
threshold of `forgetless data check`) to a row of an earlier split is drawn again, so the leakage check
of every run finds nothing.

Deterministic (seeded). Run: python scripts/make_quickstart_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from forgetless.data import similarity

OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "quickstart"
SYSTEM = "You are the Acme help desk triage assistant."
INSTRUCTION = "Triage this support ticket."
NEAR = 0.85  # forgetless data check's near-duplicate threshold (data/check.py)
SPLITS = (("train", 400), ("validation", 60), ("test", 60))

PRODUCTS = [
    "the Aero 3 blender",
    "my Nimbus router",
    "the Trail Pro backpack",
    "a pair of Strider shoes",
    "the Lumen desk lamp",
    "my Pixel Frame",
    "the Orbit smartwatch",
    "the Cascade kettle",
    "a Velo bike helmet",
    "the Quill notebook set",
    "my Echo speaker",
    "the Summit tent",
]

ISSUES = {
    "billing": [
        "I was charged twice for {p} this month.",
        "My invoice shows {amt} but the price at checkout was lower.",
        "My card was declined when I tried to pay for {p}, but the bank says it is fine.",
        "Why did my subscription price go up to {amt}?",
        "There is a charge of {amt} on my statement that I do not recognise.",
        "Can you send me a corrected invoice for {p}? The VAT number is missing.",
    ],
    "shipping": [
        "{P} still has not arrived and it was due {day}.",
        "The tracking page for {p} has not updated for a week.",
        "{P} was delivered to the wrong address.",
        "The box with {p} arrived crushed, though the item looks fine.",
        "Can I change the delivery address for {p} before it ships?",
        "The courier says {p} was delivered {day}, but nothing came.",
    ],
    "account": [
        "I cannot log in to my account; it says my password is wrong.",
        "The password reset email never arrives.",
        "I lost my phone and cannot get the two-factor code anymore.",
        "Please change the email address on my account to my new work address.",
        "My account got locked after too many login attempts.",
        "How do I delete my account and my data?",
    ],
    "technical": [
        "The app crashes every time I open the settings page for {p}.",
        "{P} will not pair with the app over Bluetooth.",
        "I get error code E{code} when I try to sync {p}.",
        "Since the last update {p} keeps disconnecting from wifi.",
        "The firmware update for {p} fails at 80 percent.",
        "The battery of {p} drains in two hours after the update.",
    ],
    "refund": [
        "I would like to return {p} and get my money back.",
        "{P} is not what I expected; please refund me.",
        "I cancelled my order for {p}, when will I get the refund?",
        "Please refund the {amt} I paid for {p}; it broke after two days.",
        "The refund for {p} I was promised still has not reached my card.",
        "I want to send back {p} for a full refund.",
    ],
}

URGENT = [
    "This is urgent!",
    "Please fix this ASAP.",
    "I need this sorted today.",
    "I need an answer immediately.",
    "This is blocking my business, please hurry.",
]
CALM = ["No rush.", "Whenever you get a chance.", "It is not urgent.", "Just letting you know, no hurry."]
GREETINGS = ["", "", "Hi,", "Hello,", "Hello there,", "Good morning,", "Dear support,"]
SIGNOFFS = ["", "", "Thanks.", "Thank you!", "Best regards, Sam", "Cheers, Alex", "Kind regards, Maria"]
ORDER_FORMS = ["Order #{n}.", "My order number is {n}.", "It was order ORD-{n}.", "(order {n})", "Order no. {n}."]
DAYS = ["yesterday", "last Monday", "on Friday", "three days ago", "last week"]


def ticket(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(list(ISSUES))
    product = rng.choice(PRODUCTS)
    issue = rng.choice(ISSUES[category]).format(
        p=product,
        P=product[0].upper() + product[1:],
        amt=f"${rng.randint(9, 300)}.{rng.randint(0, 99):02d}",
        day=rng.choice(DAYS),
        code=rng.randint(100, 999),
    )
    priority = rng.choices(["high", "normal", "low"], weights=[3, 4, 3])[0]
    parts = [rng.choice(GREETINGS), issue]
    order = "none"
    if category != "account" and rng.random() < 0.7:
        order = str(rng.randint(10000, 99999))
        parts.append(rng.choice(ORDER_FORMS).format(n=order))
    if priority == "high":
        parts.append(rng.choice(URGENT))
    elif priority == "low":
        parts.append(rng.choice(CALM))
    parts.append(rng.choice(SIGNOFFS))
    message = " ".join(p for p in parts if p)
    answer = f"category: {category} | priority: {priority} | order: {order}"
    return message, answer


def prompt(message: str) -> str:
    """The text the leakage check compares: every turn but the answer (data/check.prompt_of)."""
    return "\n".join((SYSTEM, f"{INSTRUCTION}\n\n{message}"))


def rows(n: int, rng: random.Random, messages: set[str], near: list[set[str]] | None) -> list[dict]:
    """n tickets whose messages are not in `messages` (every split's so far; the new ones join it).
    With `near` (shingle sets of the prompts of earlier splits), a ticket within NEAR of one of them
    is drawn again, and each kept ticket joins `near` so later held-out splits avoid it too."""
    out: list[dict] = []
    while len(out) < n:
        message, answer = ticket(rng)
        if message in messages:
            continue
        if near is not None:
            sh = similarity.shingles(prompt(message))
            if any(similarity.jaccard(sh, other) >= NEAR for other in near):
                continue
            near.append(sh)
        messages.add(message)
        out.append({"system": SYSTEM, "instruction": INSTRUCTION, "input": message, "output": answer})
    return out


def main() -> None:
    rng = random.Random(20261123)
    messages: set[str] = set()
    near: list[set[str]] = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, n in SPLITS:
        held_out = name != "train"
        made = rows(n, rng, messages, near if held_out else None)
        if not held_out:  # training rows only differ exactly among themselves; held-out rows avoid them
            near += [similarity.shingles(prompt(r["input"])) for r in made]
        path = OUT / f"{name}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in made), encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
