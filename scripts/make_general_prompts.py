"""Write the bundled general prompts: what the base model already knows, in English and Japanese.

Two files under src/forgetless/assets/general/:
  prompts.jsonl  - 300 prompts for self-rehearsal (the base model answers them; those answers are
                   mixed into training batches so the model keeps practising general behaviour);
  heldout.jsonl  - 60 prompts that training never sees, for measuring retention (KL to the base
                   model and greedy-answer agreement).

Six categories (knowledge, reasoning, writing, coding, advice, arithmetic), 60 prompts each,
about a third of them Japanese. Each category is split 50/10 by a seeded shuffle, so both files
cover every category and language and share no prompt.

Row format: {"id", "category", "lang", "instruction"} (the instruction format forgetless reads).
Deterministic. Run: python scripts/make_general_prompts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "general"

KNOWLEDGE_EN = [
    f"What is the capital of {c}?"
    for c in ["France", "Japan", "Italy", "Canada", "Egypt", "Brazil", "Kenya", "Norway", "Spain", "Australia"]
] + [
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "How do vaccines train the immune system?",
    "What is photosynthesis?",
    "Who wrote 'Pride and Prejudice'?",
    "What is the largest planet in the solar system?",
    "How does a rainbow form?",
    "What is the difference between weather and climate?",
    "What does DNA stand for, and what does it do?",
    "Why do we have leap years?",
    "What is the boiling point of water at sea level in Celsius?",
    "How many continents are there, and what are they?",
    "What was the purpose of the Great Wall of China?",
    "What is an atom made of?",
    "Why does ice float on water?",
    "What is inflation in economics?",
    "Who painted the Mona Lisa?",
    "What is the speed of light, approximately?",
    "How do bees make honey?",
    "What is the function of the heart?",
    "What language is spoken in Brazil?",
    "What is a black hole?",
    "How do earthquakes happen?",
    "What is the tallest mountain on Earth?",
    "What does a thermometer measure?",
    "What is the main gas in Earth's atmosphere?",
    "What is the chemical symbol for gold?",
    "Why do leaves change color in autumn?",
    "What is the longest river in Africa?",
    "How many bones does an adult human have?",
    "What is gravity?",
    "Who was Marie Curie?",
]
KNOWLEDGE_JA = [
    "富士山の高さはどのくらいですか？",
    "日本の首都はどこですか？",
    "光合成とは何ですか？簡単に説明してください。",
    "地球で一番大きな海は何ですか？",
    "虹はどうしてできるのですか？",
    "太陽系で一番大きな惑星は何ですか？",
    "水は何度で沸騰しますか？",
    "地震はなぜ起こるのですか？",
    "「源氏物語」を書いたのは誰ですか？",
    "月はなぜ満ち欠けするのですか？",
    "日本で一番長い川は何ですか？",
    "人間の心臓の役割は何ですか？",
    "季節はなぜ変わるのですか？",
    "フランスの首都はどこですか？",
    "氷はなぜ水に浮くのですか？",
    "インフレーションとは何ですか？",
    "空はなぜ青いのですか？",
    "ワクチンはどのように働きますか？",
]

REASONING_EN = [
    "If all cats are animals and some animals are black, must some cats be black? Explain.",
    "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much is the ball?",
    "Tom is taller than Ann, and Ann is taller than Joe. Who is the shortest?",
    "If it takes 5 machines 5 minutes to make 5 widgets, how long do 100 machines take to make 100 widgets?",
    "What comes next in the sequence 2, 4, 8, 16, ...?",
    "A farmer has 17 sheep and all but 9 run away. How many are left?",
    "If today is Monday, what day will it be in 10 days?",
    "Is the statement 'This sentence is false' true or false? Explain the problem.",
    "Which is heavier: a kilogram of feathers or a kilogram of iron?",
    "If you overtake the person in second place in a race, what place are you in?",
    "Three friends split a bill of $60 equally. How much does each pay?",
    "A train leaves at 3:15 pm and the trip takes 2 hours 50 minutes. When does it arrive?",
    "What is the next letter: A, C, E, G, ...?",
    "If some doctors are teachers and all teachers are readers, are some doctors readers?",
    "A clock shows 3:00. What is the angle between the hour and minute hands?",
    "Why might correlation not imply causation? Give an example.",
    "You have two ropes that each burn in one hour, unevenly. How can you measure 45 minutes?",
    "If a shirt costs $20 after a 20% discount, what was the original price?",
    "Sarah has twice as many apples as Ben. Together they have 18. How many does Ben have?",
    "Which number does not belong: 3, 5, 7, 9, 11? Explain.",
    "If the day before yesterday was Thursday, what day is tomorrow?",
    "A snail climbs 3 meters up a well each day and slips 2 meters each night. How long to climb 10 meters?",
    "Is it possible for a rectangle to be a square? Explain.",
    "What is the missing number: 1, 1, 2, 3, 5, 8, ?",
    "If you flip a fair coin three times, what is the chance of getting three heads?",
    "Mary's father has five daughters: Nana, Nene, Nini, Nono. What is the fifth daughter's name?",
    "A store sells pencils at 3 for $1. How much do 12 pencils cost?",
    "Can a statement be both true and false at the same time? Discuss briefly.",
    "If every box contains at least one red ball, and there are 4 boxes, what is the minimum number of red balls?",
    "What is wrong with the argument: 'It rained after I washed my car, so washing my car causes rain'?",
    "How many times does the digit 1 appear in the numbers from 1 to 20?",
    "If a week has 7 days, how many full weeks are in 50 days and how many days are left?",
    "An hour ago it was 11 am. What time will it be in three hours?",
    "Which is larger: 0.5 or 0.45? Explain.",
    "If you are facing north and turn right twice, which direction do you face?",
    "There are 6 eggs in a basket. Six people each take one egg, yet one egg remains in the basket. How?",
    "Why do we need both evidence and logic to reach a conclusion?",
    "If a plant doubles in size every day and covers a pond in 30 days, when did it cover half?",
    "Put these in order from smallest to largest: 1/2, 1/3, 3/4.",
    "A is the brother of B, and B is the sister of C. How is A related to C?",
]
REASONING_JA = [
    "太郎は花子より背が高く、花子は次郎より背が高いです。一番背が低いのは誰ですか？",
    "今日が月曜日なら、10日後は何曜日ですか？",
    "1, 1, 2, 3, 5, 8 の次の数は何ですか？",
    "りんごが3個で100円のとき、12個ではいくらですか？",
    "北を向いて右に2回曲がると、どの方角を向いていますか？",
    "2, 4, 8, 16 の次の数は何ですか？理由も説明してください。",
    "1キログラムの羽と1キログラムの鉄はどちらが重いですか？",
    "コインを2回投げて2回とも表が出る確率はいくらですか？",
    "「相関は因果を意味しない」とはどういう意味ですか？例を挙げてください。",
    "午後3時15分に出発して2時間50分かかると、何時に着きますか？",
    "60人を3つのグループに同じ人数で分けると、1グループは何人ですか？",
    "昨日が金曜日なら、明後日は何曜日ですか？",
    "0.5と0.45ではどちらが大きいですか？",
    "正方形は長方形の一種と言えますか？説明してください。",
    "A, C, E, G の次のアルファベットは何ですか？",
    "全ての鳥は卵を産み、ペンギンは鳥です。ペンギンは卵を産みますか？",
    "時計が3時を指しているとき、長針と短針の角度は何度ですか？",
    "20%引きで800円のシャツの元の値段はいくらですか？",
    "50日は何週間と何日ですか？",
    "姉は妹の2倍の年齢で、2人の年齢の合計は18歳です。妹は何歳ですか？",
]

WRITING_EN = [
    "Write a haiku about autumn leaves.",
    "Write a short thank-you note to a teacher.",
    "Describe a sunrise over the ocean in three sentences.",
    "Write a two-sentence horror story.",
    "Write a polite email declining a meeting invitation.",
    "Summarize the story of Cinderella in three sentences.",
    "Write a limerick about a cat who loves pizza.",
    "Write a short product description for a reusable water bottle.",
    "Write the opening line of a mystery novel.",
    "Rewrite this sentence to be more formal: 'Hey, can you send me that file real quick?'",
    "Write a short poem about the moon.",
    "Give three creative names for a coffee shop.",
    "Write a birthday message for a close friend.",
    "Describe the smell of rain to someone who has never experienced it.",
    "Write a short motivational quote about learning.",
    "Write a tweet announcing a new community garden.",
    "Write a brief apology to a customer for a late delivery.",
    "Write a four-line poem about friendship.",
    "Describe a busy city street at night.",
    "Write a short dialogue between a robot and a child.",
    "Write a one-paragraph story about a lost dog finding its way home.",
    "Summarize the benefits of reading books in two sentences.",
    "Write an invitation to a neighborhood picnic.",
    "Turn this into a catchy slogan: 'Our bakery uses fresh ingredients every day.'",
    "Write a short review of an imaginary restaurant.",
    "Write a cover letter opening sentence for a junior developer job.",
    "Describe your ideal weekend in a short paragraph.",
    "Write a fable with a moral about patience.",
    "Write a short speech welcoming new students to a school.",
    "Rewrite 'The meeting was cancelled because of the storm' in the active voice.",
    "Write three interview questions for a librarian.",
    "Write a short letter to your future self.",
    "Write a description of a cozy reading nook.",
    "Write a short song chorus about summer.",
    "Write a headline for an article about electric cars.",
    "Write a short paragraph persuading people to recycle.",
    "Describe a mountain landscape in winter.",
    "Write a riddle and give its answer.",
    "Write a short farewell message for a coworker who is leaving.",
    "Write a short bedtime story about a sleepy dragon.",
]
WRITING_JA = [
    "秋の紅葉について俳句を一つ作ってください。",
    "先生へのお礼のメッセージを短く書いてください。",
    "朝日が海から昇る様子を三文で描写してください。",
    "会議の招待を丁寧に断るメールを書いてください。",
    "桃太郎の話を三文で要約してください。",
    "友情についての短い詩を書いてください。",
    "新しいカフェの名前を三つ考えてください。",
    "友達への誕生日メッセージを書いてください。",
    "雨の日の街の様子を短く描写してください。",
    "読書の良いところを二文でまとめてください。",
    "配達が遅れたことをお客様に謝る短い文を書いてください。",
    "夏についての短い歌詞を書いてください。",
    "近所のピクニックへの招待状を書いてください。",
    "忍耐についての教訓がある短い寓話を書いてください。",
    "退職する同僚への送別のメッセージを書いてください。",
    "理想の週末について短い文章を書いてください。",
    "リサイクルを勧める短い文章を書いてください。",
    "眠いドラゴンについての短いおやすみ話を書いてください。",
    "「明日は雨が降るかもしれない」をもっと丁寧な表現にしてください。",
    "冬の山の景色を描写してください。",
]

CODING_EN = [
    "Write a Python function that reverses a string.",
    "Write a Python function that checks whether a number is prime.",
    "Explain what a for loop does in Python.",
    "What is the difference between a list and a tuple in Python?",
    "Write a Python function that returns the factorial of n.",
    "Write a SQL query that selects all rows from a table named users where age is over 30.",
    "What does the 'git commit' command do?",
    "Write a JavaScript function that adds two numbers.",
    "Explain what a dictionary is in Python, with an example.",
    "Write a Python function that counts the vowels in a string.",
    "What is recursion? Give a short example.",
    "Write a Python list comprehension that squares the numbers 1 to 10.",
    "What is the difference between '==' and 'is' in Python?",
    "Write a function that returns the largest number in a list.",
    "Explain what an API is in simple terms.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What does HTML stand for, and what is it used for?",
    "Write a bash command that counts the lines in a file named data.txt.",
    "What is a variable in programming?",
    "Write a Python function that merges two sorted lists.",
    "Explain the difference between a compiler and an interpreter.",
    "Write a Python snippet that reads a text file line by line.",
    "What is Big O notation?",
    "Write a Python function that returns the Fibonacci numbers up to n.",
    "What is an exception, and how do you handle one in Python?",
    "Write a CSS rule that makes all paragraphs blue.",
    "Explain what a class is in object-oriented programming.",
    "Write a Python function that removes duplicates from a list while keeping order.",
    "What does the 'return' statement do in a function?",
    "Write a regular expression that matches a five-digit number.",
    "What is the difference between a stack and a queue?",
    "Write a Python function that converts Celsius to Fahrenheit.",
    "Explain what JSON is and give a small example.",
    "Write a SQL query that counts the rows in a table named orders.",
    "What is version control and why is it useful?",
    "Write a Python function that sums the even numbers in a list.",
    "What does 'pip install' do?",
    "Write a Python function that capitalizes the first letter of each word in a sentence.",
    "Explain what a unit test is.",
    "Write a Python while loop that prints the numbers 1 to 5.",
]
CODING_JA = [
    "文字列を逆順にするPythonの関数を書いてください。",
    "Pythonのリストとタプルの違いを説明してください。",
    "再帰とは何ですか？短い例を挙げてください。",
    "素数かどうかを判定するPythonの関数を書いてください。",
    "Pythonの辞書とは何ですか？例を挙げて説明してください。",
    "gitのcommitコマンドは何をしますか？",
    "APIとは何か、簡単に説明してください。",
    "リストの最大値を返す関数を書いてください。",
    "スタックとキューの違いは何ですか？",
    "摂氏を華氏に変換するPythonの関数を書いてください。",
    "JSONとは何ですか？小さな例を挙げてください。",
    "コンパイラとインタプリタの違いを説明してください。",
    "Pythonで例外を処理する方法を教えてください。",
    "1から10までの数の二乗を作るリスト内包表記を書いてください。",
    "ユニットテストとは何ですか？",
    "変数とは何ですか？初心者向けに説明してください。",
    "回文かどうかを判定するPythonの関数を書いてください。",
    "バージョン管理はなぜ便利なのですか？",
    "HTMLとは何の略で、何に使われますか？",
    "リストの重複を取り除くPythonのコードを書いてください。",
]

ADVICE_EN = [
    "Give three tips for better sleep.",
    "How can I stay focused while working from home?",
    "What should I pack for a weekend hiking trip?",
    "How do I make a simple budget?",
    "Give me tips for a job interview.",
    "How can I reduce stress before an exam?",
    "What are some healthy breakfast ideas?",
    "How do I start learning a new language?",
    "How can I save money on groceries?",
    "What should I do if I feel lonely in a new city?",
    "How can I keep my houseplants alive?",
    "Give tips for giving a good presentation.",
    "How do I prepare for a long flight?",
    "How can I improve my handwriting?",
    "What are good habits for staying healthy in winter?",
    "How do I politely say no to extra work?",
    "How should I organize my closet?",
    "Give tips for running your first 5 km race.",
    "How can I make my mornings less rushed?",
    "How do I clean a cast iron pan?",
    "What should I consider when adopting a dog?",
    "How can I drink more water during the day?",
    "How do I write a good to-do list?",
    "What are some ways to make new friends as an adult?",
    "How can I reduce my screen time?",
    "How do I choose a good password?",
    "What should I do before a job interview the night before?",
    "How can I be a better listener?",
    "How do I store fresh herbs so they last longer?",
    "Give tips for studying effectively.",
    "How can I make my small apartment feel bigger?",
    "How do I prepare for a power outage?",
    "What are good ways to relax after work?",
    "How do I start a vegetable garden?",
    "How can I be more productive in the afternoon?",
    "What should I do if I lose my wallet?",
    "How do I keep food safe in the fridge?",
    "Give tips for a successful first day at a new job.",
    "How can I get better at waking up early?",
    "How do I give constructive feedback to a colleague?",
]
ADVICE_JA = [
    "よく眠るためのコツを三つ教えてください。",
    "在宅勤務で集中力を保つにはどうすればいいですか？",
    "週末のハイキングに何を持っていけばいいですか？",
    "簡単な家計簿のつけ方を教えてください。",
    "面接のコツを教えてください。",
    "試験前のストレスを減らすにはどうすればいいですか？",
    "健康的な朝ごはんのアイデアを教えてください。",
    "新しい言語を学び始めるにはどうすればいいですか？",
    "食費を節約する方法を教えてください。",
    "観葉植物を元気に育てるコツは何ですか？",
    "上手なプレゼンテーションのコツを教えてください。",
    "長時間のフライトの準備はどうすればいいですか？",
    "冬に健康を保つための習慣を教えてください。",
    "仕事の追加依頼を丁寧に断るにはどうすればいいですか？",
    "初めて5キロ走るときのコツを教えてください。",
    "朝をあわただしくしないための工夫は何ですか？",
    "スマートフォンを使う時間を減らすにはどうすればいいですか？",
    "安全なパスワードの選び方を教えてください。",
    "効果的に勉強する方法を教えてください。",
    "停電に備えて何をしておけばいいですか？",
]


def arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    """60 distinct arithmetic questions with seeded numbers: 40 English, 20 Japanese."""
    en = [
        "What is {a} + {b}?",
        "What is {a} - {b}?",
        "What is {c} times {d}?",
        "What is {e} divided by {d}?",
        "What is {p}% of {a}?",
        "What is {c} squared?",
        "If I have {a} coins and spend {b}, how many are left?",
        "A box holds {d} eggs. How many eggs are in {c} boxes?",
    ]
    ja = [
        "{a} + {b} はいくつですか？",
        "{a} - {b} はいくつですか？",
        "{c} × {d} はいくつですか？",
        "{e} ÷ {d} はいくつですか？",
        "{a}の{p}%はいくつですか？",
    ]
    out, seen = [], set()
    while len(out) < 60:
        lang = "en" if len(out) < 40 else "ja"
        pattern = rng.choice(en if lang == "en" else ja)
        a, b = rng.randint(20, 999), rng.randint(2, 19)
        c, d = rng.randint(3, 29), rng.randint(2, 12)
        text = pattern.format(a=a, b=b, c=c, d=d, e=c * d, p=rng.choice([10, 20, 25, 50]))
        if text not in seen:
            seen.add(text)
            out.append((lang, text))
    return out


def pool(rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    def tag(lang, items):
        return [(lang, t) for t in items]

    cats = {
        "knowledge": tag("en", KNOWLEDGE_EN) + tag("ja", KNOWLEDGE_JA),
        "reasoning": tag("en", REASONING_EN) + tag("ja", REASONING_JA),
        "writing": tag("en", WRITING_EN) + tag("ja", WRITING_JA),
        "coding": tag("en", CODING_EN) + tag("ja", CODING_JA),
        "advice": tag("en", ADVICE_EN) + tag("ja", ADVICE_JA),
        "arithmetic": arithmetic(rng),
    }
    for name, items in cats.items():
        texts = [t for _, t in items]
        assert len(items) == 60 and len(set(texts)) == 60, (name, len(items), len(set(texts)))
    return cats


def main() -> None:
    rng = random.Random(20261123)
    train, held = [], []
    for category, items in pool(rng).items():
        # Split per language so both files keep the ~2:1 English/Japanese mix of every category.
        for lang in ("en", "ja"):
            rows = [t for lg, t in items if lg == lang]
            rng.shuffle(rows)
            n_held = round(len(rows) / 6)
            held += [(category, lang, t) for t in rows[:n_held]]
            train += [(category, lang, t) for t in rows[n_held:]]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("prompts.jsonl", train), ("heldout.jsonl", held)):
        with open(OUT / name, "w", encoding="utf-8") as f:
            for i, (category, lang, text) in enumerate(rows):
                row = {"id": f"{name.split('.')[0]}-{i:03d}", "category": category, "lang": lang, "instruction": text}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} rehearsal prompts and {len(held)} held-out prompts to {OUT}")


if __name__ == "__main__":
    main()
