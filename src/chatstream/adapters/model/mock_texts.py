"""Texts of the mock backend, written for chatstream (English and Japanese)."""

from __future__ import annotations

ROUND_EN = (
    "1. The lighthouse keeper counted the ships that passed each night.",
    "2. One evening a small boat with a red sail did not pass; it stopped.",
    "3. A girl climbed out and asked whether the light ever grew tired.",
    "4. The keeper laughed and said that the light only grew brighter when watched.",
    "5. She stayed for supper and told him about the islands beyond the fog.",
    "6. At midnight the fog rolled in, thick as wool, and the ships went quiet.",
    "7. Together they turned the great lens by hand until their arms ached.",
    "8. Far out, a horn answered them, then another, then a whole chorus.",
    "9. By dawn every ship had found the harbour, one after another.",
    "10. The girl raised her red sail and waved from the edge of the sea.",
    "11. The keeper wrote her name in the log, under the list of ships.",
    "12. Every night since, he has counted one ship more than passes.",
)

ROUND_JA = (
    "1. 灯台守は毎晩、通り過ぎる船を数えていました。",
    "2. ある夜、赤い帆の小さな舟が灯台の下で止まりました。",
    "3. 舟から降りた少女は、灯りは疲れないのかと尋ねました。",
    "4. 灯台守は笑って、見てもらえるほど明るくなるのだと答えました。",
    "5. 少女は夕食を共にし、霧の向こうの島々の話をしました。",
    "6. 真夜中、羊毛のように濃い霧が押し寄せ、船の音が消えました。",
    "7. 二人は腕が痛くなるまで、大きなレンズを手で回し続けました。",
    "8. 遠くで霧笛が答え、やがて幾つもの霧笛が重なりました。",
    "9. 夜明けまでに、すべての船が港にたどり着きました。",
    "10. 少女は赤い帆を上げ、海の端から手を振りました。",
    "11. 灯台守は航海日誌の船の名前の下に、少女の名を書きました。",
    "12. それからというもの、彼は毎晩、船を一隻多く数えるのです。",
)

LONG_EN = (
    "Once there was a clockmaker who lived at the top of a crooked street. "
    "Her shop was so small that the clocks had to take turns ticking, and on windy days "
    "the whole building hummed like a kettle about to boil.\n\n"
    "Every morning she opened the shutters, wound the tall clock by the door, and listened. "
    "A clock that runs true, she liked to say, sounds like someone breathing in their sleep; "
    "a clock that runs false sounds like someone pretending to.\n\n"
    "One winter a boy brought her a pocket watch that had stopped at a quarter past three. "
    "It was not broken. Every wheel turned and every spring was sound, yet the hands would "
    "not move. She kept it on her bench for a week, and each night she told it a little "
    "about the street: the baker who sang off key, the cat that slept on the post box, "
    "the old man who fed the pigeons with crumbs from his own pockets.\n\n"
    "On the eighth morning the watch was ticking. The boy came back, held it to his ear, "
    "and smiled. It had belonged to his grandfather, he said, who used to tell stories "
    "exactly like those. Some machines, the clockmaker wrote in her notebook that evening, "
    "do not need repair. They need company."
)

LONG_JA = (
    "坂の上に、小さな時計屋がありました。店はとても狭く、時計たちは順番に時を刻まなければ"
    "なりませんでした。\n\n"
    "ある冬の日、少年が午後三時十五分で止まった懐中時計を持ってきました。どこも壊れていない"
    "のに、針だけが動きません。時計屋は一週間、毎晩その時計に町の話を聞かせました。\n\n"
    "八日目の朝、時計は動き出していました。少年は耳に当てて微笑みました。祖父も同じような"
    "話をよくしてくれたのだと言いました。修理ではなく、話し相手が必要な機械もあるのです。"
)
