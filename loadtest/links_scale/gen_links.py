#!/usr/bin/env python3
"""Writes N realistic links (JSON Lines) to stdout: a mix of every target type, ~1,000
creators, Shopify variant ids above 2^53. Deterministic for a given N and --seed."""
import argparse, json, random, sys

p = argparse.ArgumentParser()
p.add_argument("n", type=int)
p.add_argument("--seed", type=int, default=7)
p.add_argument("--version", default="v1", help="changes every URL, to make a different table")
a = p.parse_args()
rnd = random.Random(a.seed)
out = sys.stdout
for i in range(a.n):
    creator = f"creator{i % 1000}"
    kind = i % 4
    if kind == 0:
        target = {"type": "url", "url": f"https://brand{i % 50}.example/products/item-{i}?{a.version}=1", "platform": "shopify"}
    elif kind == 1:
        target = {"type": "shopify_cart", "shop": f"brand{i % 50}.example",
                  "items": [{"variant": 9007199254740993 + i, "qty": 1}, {"variant": 40000000000 + rnd.randrange(10**6), "qty": 2}]}
    elif kind == 2:
        target = {"type": "woocommerce_cart", "shop": f"shop{i % 50}.example", "items": [{"product": i, "qty": 1}]}
    else:
        target = {"type": "bigcommerce_cart", "format": "checkout", "shop": f"store{i % 50}.example",
                  "items": [{"product": i, "qty": 1}, {"sku": f"SKU-{i}", "qty": 3}]}
    link = {"id": f"l{i:08d}-{a.version}", "creator": creator, "campaign": f"camp{i % 20}", "discount": f"CODE{i % 1000}",
            "target": target, "utm": {"source": "instagram", "medium": "creator", "campaign": f"camp{i % 20}"}}
    out.write(json.dumps(link, separators=(",", ":")) + "\n")
