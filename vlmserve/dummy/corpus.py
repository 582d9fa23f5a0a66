"""The built-in text a dummy tokenizer's byte-level BPE is trained on.

Written for this purpose (no third-party text): everyday English, chat-style requests, JSON, code,
numbers and some Chinese, so that prompts tokenize into roughly as many tokens as with a real
tokenizer (a few characters per token) and common words are single tokens.
"""

from __future__ import annotations

CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "What is in this image? Describe the picture in detail, including the colors, the objects and "
    "the people you can see.",
    "The photo shows a small red house next to a river. There are two trees on the left and a "
    "blue car parked in front of the door.",
    "Please answer the question with a short sentence. If you are not sure, say that you do not "
    "know instead of guessing.",
    "A woman in a yellow jacket is walking her dog along the beach at sunset. The sky is orange "
    "and pink, and the water reflects the light.",
    "Count the number of apples on the table and tell me how many are green and how many are red.",
    "Read the text in the screenshot and translate it into English. Keep the original formatting.",
    "The chart compares the revenue of three companies from 2019 to 2024. The first company grew "
    "the fastest, while the second one stayed about the same.",
    "You are a helpful assistant. You answer questions about images, videos and documents.",
    "Summarize the following document in three bullet points and list the main action items.",
    "The video starts with a man opening a box. Then he takes out a camera, turns it on and "
    "points it at the window. At the end of the video, the screen turns black.",
    "Is there a traffic light in the picture? If so, what color is it showing right now?",
    "The table has four columns: name, age, city and occupation. Extract every row as JSON.",
    "Call the weather tool with the city name and the date, then report the temperature.",
    "This is a receipt from a grocery store. The total amount is 42.50 dollars, paid by card.",
    "Thank you! Could you also explain why the answer is correct? Think step by step.",
    "The diagram shows how water moves from the ocean to the clouds, falls as rain and flows back.",
    "Find the differences between the two pictures and describe where each one is located.",
    '{"name": "Alice", "age": 31, "city": "Paris", "tags": ["travel", "photo"], "active": true}',
    '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}',
    '{"objects": [{"label": "dog", "box": [12, 40, 200, 310]}, {"label": "ball", "score": 0.93}]}',
    "def resize(image, width, height):\n    return image.resize((width, height))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, 'is even')\n"
    "    else:\n        continue\n",
    "import json\n\nwith open('data.json') as f:\n    data = json.load(f)\nprint(len(data))\n",
    "SELECT name, price FROM products WHERE price > 100 ORDER BY price DESC LIMIT 5;",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week.",
    "January February March April May June July August September October November December",
    "one two three four five six seven eight nine ten eleven twelve twenty fifty hundred thousand",
    "0 1 2 3 4 5 6 7 8 9 10 12 16 20 24 32 48 64 100 128 256 512 1000 1024 2048 4096 2024 3.14",
    "red orange yellow green blue purple black white gray brown pink light dark bright",
    "left right top bottom center middle front back above below inside outside near far",
    "The model reads the image, finds the text and answers in the same language as the question.",
    "I think the answer is yes, because the sign on the wall says that the shop is open today.",
    "这张图片里有什么？请用中文描述图片的内容。",
    "图片中有一只小狗在草地上奔跑，天空很蓝，远处有几棵树。",
    "请把这段文字翻译成英文，并保持原来的格式。",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "Wie viel kostet das? C'est une belle journée. ¿Dónde está la estación? Grazie mille!",
    "Emoji are fine too: 🙂 👍 🎉 ❤️ 🐶 🚗 📷 ✅",
)
