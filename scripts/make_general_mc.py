"""Write the bundled multiple-choice retention benchmark: src/forgetless/assets/general/mc.jsonl.

60 short general-knowledge, science, language and arithmetic questions (40 English, 20
Japanese), 3-4 choices each, plus 2 few-shot examples. They measure what the base model
knows before fine-tuning and whether it still knows it after; the format is the one
documented in forgetless/eval/choice.py. Answer positions are shuffled with a fixed seed.
Run: python scripts/make_general_mc.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "general" / "mc.jsonl"

FEWSHOT = [
    ("What color is grass?", "green", ["red", "blue"]),
    ("草は何色ですか？", "緑", ["赤", "青"]),
]

# (question, correct answer, wrong answers)
QUESTIONS = [
    ("What is the capital of France?", "Paris", ["Berlin", "Madrid", "Rome"]),
    ("What is the capital of Japan?", "Tokyo", ["Kyoto", "Osaka", "Seoul"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", ["the Atlantic Ocean", "the Indian Ocean"]),
    ("How many days are in a week?", "seven", ["five", "ten", "twelve"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("What gas do plants take in from the air?", "carbon dioxide", ["oxygen", "helium", "neon"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the rabbit", "the cow", "the owl"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("How many legs does a spider have?", "eight", ["six", "four", "ten"]),
    ("Which organ pumps blood through the body?", "the heart", ["the lungs", "the liver", "the stomach"]),
    (
        "What is the boiling point of water at sea level?",
        "100 degrees Celsius",
        ["50 degrees Celsius", "0 degrees Celsius"],
    ),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare", ["Charles Dickens", "Mark Twain", "Jane Austen"]),
    ("What is the largest planet in our solar system?", "Jupiter", ["Mercury", "Mars", "Earth"]),
    ("Which season comes after summer?", "autumn", ["spring", "winter"]),
    ("What is the opposite of 'hot'?", "cold", ["warm", "loud", "tall"]),
    ("How many continents are there?", "seven", ["three", "nine", "twelve"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French", "German"]),
    ("What do you call a baby cat?", "a kitten", ["a puppy", "a calf", "a foal"]),
    ("Which star is closest to Earth?", "the Sun", ["Sirius", "Polaris", "Vega"]),
    ("What is the chemical symbol for water?", "H2O", ["CO2", "O2", "NaCl"]),
    ("Which shape has three sides?", "a triangle", ["a square", "a circle", "a hexagon"]),
    ("What is the plural of 'child'?", "children", ["childs", "childes", "childen"]),
    ("Which instrument has black and white keys?", "the piano", ["the violin", "the drum", "the flute"]),
    ("What do caterpillars turn into?", "butterflies", ["spiders", "frogs", "bees"]),
    ("Which month has the fewest days?", "February", ["January", "March", "December"]),
    ("What is the tallest mountain in the world?", "Mount Everest", ["Mount Fuji", "Mont Blanc", "Kilimanjaro"]),
    ("Which metal is liquid at room temperature?", "mercury", ["iron", "gold", "copper"]),
    ("In which direction does the Sun rise?", "east", ["west", "north", "south"]),
    ("What is 7 + 5?", "12", ["11", "13", "75"]),
    ("What is 9 x 3?", "27", ["21", "30", "12"]),
    ("What is 100 - 45?", "55", ["65", "45", "145"]),
    ("What is half of 50?", "25", ["20", "30", "100"]),
    ("What is 6 x 7?", "42", ["36", "48", "67"]),
    ("What is 81 divided by 9?", "9", ["8", "7", "90"]),
    ("Which of these is a programming language?", "Python", ["Granite", "Velvet", "Banana"]),
    ("In Python, which keyword defines a function?", "def", ["func", "function", "lambda_def"]),
    ("What does CPU stand for?", "central processing unit", ["computer power unit", "central print utility"]),
    ("What is the freezing point of water in Celsius?", "0 degrees", ["10 degrees", "100 degrees", "-50 degrees"]),
    ("Which is a primary color?", "blue", ["green", "purple", "orange"]),
    ("日本の首都はどこですか？", "東京", ["大阪", "京都", "札幌"]),
    ("富士山はどこの国にありますか？", "日本", ["中国", "韓国", "アメリカ"]),
    ("一週間は何日ですか？", "七日", ["五日", "十日"]),
    ("水が凍ると何になりますか？", "氷", ["雲", "砂", "油"]),
    ("太陽はどの方角から昇りますか？", "東", ["西", "北", "南"]),
    ("3 + 4 はいくつですか？", "7", ["6", "8", "34"]),
    ("10 × 5 はいくつですか？", "50", ["15", "105", "40"]),
    ("一年は何か月ですか？", "十二か月", ["十か月", "六か月"]),
    ("犬の鳴き声はどれですか？", "ワンワン", ["ニャー", "モー", "コケコッコー"]),
    ("「暑い」の反対の言葉はどれですか？", "寒い", ["高い", "長い", "早い"]),
    ("りんごの色としてよくあるのはどれですか？", "赤", ["紫", "黒"]),
    ("日本で一番高い山はどれですか？", "富士山", ["阿蘇山", "高尾山", "筑波山"]),
    ("蜂が作るものはどれですか？", "はちみつ", ["牛乳", "絹", "紙"]),
    ("春の次の季節はどれですか？", "夏", ["冬", "秋"]),
    ("100 − 30 はいくつですか？", "70", ["60", "130", "80"]),
    ("人間の血液を全身に送る臓器はどれですか？", "心臓", ["肺", "胃", "腎臓"]),
    ("地球で一番大きな海はどれですか？", "太平洋", ["大西洋", "インド洋", "北極海"]),
    ("虹は何色と言われますか？", "七色", ["三色", "十色"]),
    ("猫の子どもを何と呼びますか？", "子猫", ["子犬", "子牛"]),
    ("8 ÷ 2 はいくつですか？", "4", ["6", "2", "16"]),
]


def row(question: str, correct: str, wrong: list[str], rng: random.Random, fewshot: bool = False) -> dict:
    choices = [correct, *wrong]
    rng.shuffle(choices)
    out = {"question": question, "choices": choices, "answer": choices.index(correct)}
    return {**out, "fewshot": True} if fewshot else out


def main() -> None:
    rng = random.Random(20261123)
    assert len(QUESTIONS) == 60 and len({q for q, _, _ in QUESTIONS}) == 60
    rows = [row(q, c, w, rng, fewshot=True) for q, c, w in FEWSHOT] + [row(q, c, w, rng) for q, c, w in QUESTIONS]
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(QUESTIONS)} questions and {len(FEWSHOT)} few-shot examples to {OUT}")


if __name__ == "__main__":
    main()
