"""Write the bundled preference set: polite Japanese (keigo, です/ます) preferred over casual speech.

SmolLM2-135M-Instruct rarely answers Japanese questions in a consistent polite register, which
is the kind of existing behaviour DPO is for. Every pair has the same content in both answers;
only the register differs, so a model can only win the pair by preferring keigo.
Output: src/forgetless/assets/keigo/{train,test}.jsonl (seeded; rerun to reproduce).
Run: python scripts/make_keigo_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "keigo"
CAPITALS = [
    ("日本", "東京"),
    ("フランス", "パリ"),
    ("イギリス", "ロンドン"),
    ("ドイツ", "ベルリン"),
    ("イタリア", "ローマ"),
    ("スペイン", "マドリード"),
    ("中国", "北京"),
    ("韓国", "ソウル"),
    ("アメリカ", "ワシントン"),
    ("カナダ", "オタワ"),
    ("オーストラリア", "キャンベラ"),
    ("ロシア", "モスクワ"),
    ("エジプト", "カイロ"),
    ("タイ", "バンコク"),
    ("インド", "ニューデリー"),
    ("ブラジル", "ブラジリア"),
    ("メキシコ", "メキシコシティ"),
    ("ケニア", "ナイロビ"),
]
COLORS = [
    ("空", "青"),
    ("雪", "白"),
    ("りんご", "赤"),
    ("バナナ", "黄色"),
    ("草", "緑"),
    ("カラス", "黒"),
    ("みかん", "オレンジ色"),
]
STORES = ["駅前店", "本店", "空港店", "新宿店", "大阪店", "名古屋店", "オンライン窓口", "サポートセンター"]
ITEMS = ["ヘッドホン", "リュック", "スニーカー", "マグカップ", "ノートパソコン", "腕時計", "コート", "電気ケトル"]
SERVICES = ["会員サイト", "アプリ", "メール", "ポイントカード", "オンラインストア"]


def pairs(rng: random.Random) -> list[dict]:
    out = []
    for country, city in CAPITALS:
        q = rng.choice(["{c}の首都はどこ？", "{c}の首都を教えて。"]).format(c=country)
        out.append((q, f"{country}の首都は{city}です。", f"{country}の首都は{city}だよ。"))
    for thing, color in COLORS:
        out.append((f"{thing}は何色？", f"{thing}はふつう{color}です。", f"{thing}はふつう{color}だよ。"))
    for _ in range(60):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        out.append((f"{a}たす{b}はいくつ？", f"{a}たす{b}は{a + b}です。", f"{a}たす{b}は{a + b}だよ。"))
    for _ in range(50):
        n, d = rng.randint(10000, 99999), rng.randint(2, 7)
        out.append(
            (
                f"注文番号{n}の荷物はいつ届く？",
                f"ご注文番号{n}のお荷物は{d}日以内にお届けいたします。",
                f"注文{n}の荷物は{d}日以内に届くよ。",
            )
        )
    for store in STORES:
        h = rng.randint(17, 22)
        out.append(
            (f"{store}は何時まで開いてる？", f"{store}は{h}時まで営業しております。", f"{store}は{h}時までやってるよ。")
        )
    for item in ITEMS:
        out.append(
            (
                f"{item}を返品したい。",
                f"かしこまりました。{item}の返品手続きをご案内いたします。",
                f"わかった。{item}の返品のやり方を教えるね。",
            )
        )
        out.append((f"{item}の在庫はある？", f"はい、{item}の在庫はございます。", f"うん、{item}の在庫はあるよ。"))
    for service in SERVICES:
        out.append(
            (
                f"{service}のパスワードを忘れた。",
                f"{service}のログイン画面の「パスワードを忘れた方」から再設定してください。",
                f"{service}のログイン画面の「パスワードを忘れた方」から再設定して。",
            )
        )
    rng.shuffle(out)
    return [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in out]


def main() -> None:
    rows = pairs(random.Random(20261123))
    OUT.mkdir(parents=True, exist_ok=True)
    n_test = 30
    for name, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (OUT / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{OUT / name}.jsonl: {len(part)} pairs")


if __name__ == "__main__":
    main()
