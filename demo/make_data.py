"""Generate the lora_sweep demo data set: support tickets -> one-line JSON.

Each sample is a short customer-support ticket (user turn) and the assistant
answer ``{"product": ..., "category": ..., "urgency": ..., "order_id": ...}``
as a single JSON line. No system message is stored; the study supplies it.

Usage::

    python demo/make_data.py [--seed 0] [--train 400] [--test 48] [--holdout 0] [--out demo]

``--holdout N`` also writes ``holdout.json``: N more tickets, none in train or test (bench 3 scores
the adapters a sweep chose on test.json there), leaving train.json and test.json as they were.

Output is deterministic: the same arguments always give the same bytes.
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

KEYS: tuple[str, ...] = ("product", "category", "urgency", "order_id")
CATEGORIES: tuple[str, ...] = ("billing", "shipping", "defect", "account", "return")
URGENCIES: tuple[str, ...] = ("high", "normal", "low")
NULL_ORDER_SHARE = 0.2

PRODUCTS: tuple[str, ...] = (
    "AeroBlend 300 blender",
    "NimbusBook 14 laptop",
    "PulseFit Band 2",
    "QuietWave earbuds",
    "BrewMaster Pro coffee maker",
    "TerraTrek 40L backpack",
    "LumaDesk LED lamp",
    "FrostByte mini fridge",
    "SwiftCharge 20K power bank",
    "ZenRoll yoga mat",
    "VoltRide X2 e-scooter",
    "Orbit 4K webcam",
)

# Body sentences per category; "{product}" is the catalogue name and "{ref}"
# is either an inline order reference like " (order A-48213)" or "".
TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for the {product}{ref}.",
        "The invoice for my {product}{ref} shows the wrong price.",
        "My card was billed for the {product}{ref} even though checkout said the payment failed.",
        "I used a discount code on the {product}{ref} but it was not applied to the total.",
        "Can you explain the extra fee on my bill for the {product}{ref}?",
        "There is a charge for the {product}{ref} on my card statement that looks too high.",
        "I need a corrected invoice for the {product}{ref}, the tax amount is wrong.",
        "I paid for express delivery on the {product}{ref} and was billed for it twice.",
    ),
    "shipping": (
        "My {product}{ref} still hasn't arrived and the tracking has not moved in a week.",
        "Tracking says my {product}{ref} was delivered but nothing came.",
        "Can I change the delivery address for the {product}{ref}?",
        "The {product}{ref} was shipped to my old address.",
        "My {product}{ref} seems to be stuck at the courier depot.",
        "The courier left my {product}{ref} at the wrong house.",
        "When will the {product}{ref} ship? It has said processing for days.",
        "The delivery date for my {product}{ref} keeps getting pushed back.",
    ),
    "defect": (
        "My {product}{ref} stopped working after two days.",
        "The {product}{ref} arrived with a cracked part.",
        "The {product}{ref} keeps failing after a few minutes of use.",
        "A piece of my {product}{ref} broke the first time I used it.",
        "My {product}{ref} has an obvious manufacturing defect.",
        "The {product}{ref} does not work as described, I think it is faulty.",
        "My {product}{ref} keeps malfunctioning no matter what I try.",
        "The {product}{ref} came out of the box already broken.",
    ),
    "account": (
        "I can't log in to my account to register my {product}{ref}.",
        "Please update the email on my account, I bought the {product}{ref} with my old one.",
        "I forgot my password and need to see the warranty for my {product}{ref}.",
        "My account got locked while I was checking the {product}{ref} purchase.",
        "The {product}{ref} does not show up in my account order history.",
        "Someone changed my account password right after I ordered the {product}{ref}.",
        "How do I merge two accounts? The {product}{ref} is on the wrong one.",
        "The verification email never arrives, so I can't sign in to review the {product}{ref}.",
    ),
    "return": (
        "I'd like to return the {product}{ref}, it is not what I expected.",
        "How do I send back the {product}{ref}? It doesn't suit me.",
        "I need a return label for the {product}{ref}.",
        "I want to exchange the {product}{ref} for a different model.",
        "I changed my mind about the {product}{ref} and want my money back.",
        "Is it too late to return the {product}{ref}? I bought it three weeks ago.",
        "I sent the {product}{ref} back last week, has the return been processed?",
        "The {product}{ref} was a gift and I'd like to return it for store credit.",
    ),
}

INLINE_REFS: tuple[str, ...] = (" (order {oid})", " (order #{oid})", " (order no. {oid})", " (#{oid})")
ORDER_SENTENCES: tuple[str, ...] = (
    "Order {oid}.",
    "Order number: {oid}.",
    "My order number is {oid}.",
    "Ref: {oid}.",
    "Order ID {oid}.",
    "The order is {oid}.",
)
NO_ORDER_SENTENCES: tuple[str, ...] = (
    "I don't have the order number handy.",
    "I can't find my order number.",
    "I lost the confirmation email with the order number.",
)

HIGH_SENTENCES: tuple[str, ...] = (
    "This is urgent.",
    "Please sort this out ASAP.",
    "I need this fixed today.",
    "Urgent, please reply today.",
    "Please help ASAP.",
    "I need an answer today, it's urgent.",
)
HIGH_PREFIXES: tuple[str, ...] = ("URGENT: ", "Urgent - ", "ASAP please: ")
LOW_SENTENCES: tuple[str, ...] = (
    "No rush, whenever you get a chance.",
    "Whenever you get a chance is fine.",
    "No rush at all.",
    "There's no rush on this.",
    "Take your time, no rush.",
    "Get back to me whenever you get a chance.",
)
NORMAL_SENTENCES: tuple[str, ...] = (
    "",
    "",
    "Could you help?",
    "Please advise.",
    "Let me know the next steps.",
    "What should I do?",
    "Can you look into it?",
)

GREETINGS: tuple[str, ...] = ("", "", "Hi,", "Hello,", "Hi there,", "Hey,", "Good morning,", "Hello team,")
NAMES: tuple[str, ...] = (
    "Maria", "Tom", "Priya", "Jonas", "Aisha", "Ken", "Lucia", "Sam",
    "Olga", "Diego", "Mei", "Omar", "Grace", "Luca", "Nadia", "Ben",
)
SIGNOFFS: tuple[str, ...] = ("", "", "", "Thanks, {name}", "- {name}", "Regards, {name}", "Cheers, {name}", "Thank you.")


def _order_id(rng: random.Random) -> str:
    """Return a code like ``A-48213`` (capital letter, dash, 5 digits)."""
    return f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXZ')}-{rng.randrange(10000, 100000)}"


def _after_comma(sentence: str) -> str:
    """Lower-case the first letter when the sentence follows ``Hi,`` (but keep ``I``)."""
    first = sentence.split(" ", 1)[0]
    if first == "I" or first.startswith("I'"):
        return sentence
    return sentence[0].lower() + sentence[1:]


def _ticket(rng: random.Random, category: str, urgency: str, oid: str | None) -> tuple[str, str]:
    """Build one ticket text; return (ticket, product)."""
    product = rng.choice(PRODUCTS)
    template = rng.choice(TEMPLATES[category])

    placement = "none" if oid is None else rng.choice(("inline", "inline", "before", "after", "after"))
    ref = rng.choice(INLINE_REFS).format(oid=oid) if placement == "inline" else ""
    body = template.format(product=product, ref=ref)

    sentences = [body]
    if placement == "before":
        sentences.insert(0, rng.choice(ORDER_SENTENCES).format(oid=oid))
    elif placement == "after":
        sentences.append(rng.choice(ORDER_SENTENCES).format(oid=oid))
    elif oid is None and rng.random() < 0.3:
        sentences.append(rng.choice(NO_ORDER_SENTENCES))

    prefix = ""
    if urgency == "high":
        if rng.random() < 0.3:
            prefix = rng.choice(HIGH_PREFIXES)
        else:
            sentences.append(rng.choice(HIGH_SENTENCES))
    elif urgency == "low":
        sentences.append(rng.choice(LOW_SENTENCES))
    else:
        closing = rng.choice(NORMAL_SENTENCES)
        if closing:
            sentences.append(closing)

    greeting = "" if prefix else rng.choice(GREETINGS)
    if greeting.endswith(","):
        sentences[0] = _after_comma(sentences[0])
    signoff = rng.choice(SIGNOFFS).format(name=rng.choice(NAMES))
    text = " ".join(p for p in (greeting, " ".join(sentences), signoff) if p)
    return prefix + text, product


def _answer(product: str, category: str, urgency: str, oid: str | None) -> str:
    """Return the assistant answer: one JSON line with keys in KEYS order."""
    obj = {"product": product, "category": category, "urgency": urgency, "order_id": oid}
    return json.dumps(obj, ensure_ascii=False)


def _spread(rng: random.Random, n: int, values: list) -> list:
    """Return n values cycling through ``values`` (balanced), shuffled."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _build(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    """Build n samples whose ticket texts are unique and not in ``exclude``.

    Texts used are added to ``exclude``. Categories are balanced, urgency is
    about 40% normal / 30% high / 30% low, and exactly round(n * 0.2) tickets
    have no order id.
    """
    categories = _spread(rng, n, list(CATEGORIES))
    urgencies = _spread(rng, n, ["normal"] * 4 + ["high"] * 3 + ["low"] * 3)
    n_null = round(n * NULL_ORDER_SHARE)
    has_null = [i < n_null for i in range(n)]
    rng.shuffle(has_null)

    samples: list[dict] = []
    for category, urgency, null in zip(categories, urgencies, has_null):
        for _ in range(1000):
            oid = None if null else _order_id(rng)
            ticket, product = _ticket(rng, category, urgency, oid)
            if ticket not in exclude:
                break
        else:  # pragma: no cover - template space is far larger than n
            raise RuntimeError("could not generate a unique ticket")
        exclude.add(ticket)
        samples.append(
            {
                "messages": [
                    {"role": "user", "content": ticket},
                    {"role": "assistant", "content": _answer(product, category, urgency, oid)},
                ]
            }
        )
    return samples


def generate(seed: int, n: int) -> list[dict]:
    """Return n samples (``{"messages": [...]}``) generated from ``seed``."""
    return _build(random.Random(seed), n, set())


def _write_jsonl(path: Path, samples: list[dict]) -> None:
    """Write samples one JSON object per line, utf-8, ``\\n`` newlines."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")


def write(out_dir: str | Path, seed: int = 0, n_train: int = 400, n_test: int = 48, n_holdout: int = 0) -> None:
    """Write ``train.json`` and ``test.json`` (and ``holdout.json`` when n_holdout) into ``out_dir``.

    Train is ``generate(seed, n_train)``; test, then holdout, continue the same random
    stream and never repeat an earlier ticket text.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    train = _build(rng, n_train, seen)
    test = _build(rng, n_test, seen)
    _write_jsonl(out / "train.json", train)
    _write_jsonl(out / "test.json", test)
    if n_holdout:
        _write_jsonl(out / "holdout.json", _build(rng, n_holdout, seen))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=400, help="number of training samples")
    parser.add_argument("--test", type=int, default=48, help="number of test samples")
    parser.add_argument("--holdout", type=int, default=0, help="number of held-out samples (holdout.json)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="output folder (default: demo/)")
    args = parser.parse_args(argv)
    write(args.out, args.seed, args.train, args.test, args.holdout)
    print(f"wrote {args.train} train, {args.test} test and {args.holdout} held-out samples to {args.out}")


if __name__ == "__main__":
    main()
