"""Reference similarity scores for multi-party `similarity_scores` projects, made with anonlink
0.15.3's own candidate generation, so the e2e tests (tests/e2e/beyond.rs) compare the service's
answer with anonlink's and not with this repository's engine.

Parties are FEBRL4 CLKs (data/febrl4) picked through the ground truth, so that every party
shares records with others: the same CLK in two parties (dice 1.0, many ties), a record and its
duplicate (high scores), and unrelated records. Blocks, where used, are two bits of the CLK, so a
record is in two blocks and pairs found in both must appear once.

Run (anonlink 0.15.3 in a venv): pip install anonlink==0.15.3 && python3 tests/data/multiparty/make_multiparty.py
Writes tests/data/multiparty/{three_parties,five_parties,five_parties_blocked}.json:
{"threshold", "blocking", "parties": [[[side, row], ...], ...], "blocks": [[[id, ...], ...], ...]?,
 "similarity_scores": [[[party, row], [party, row], score], ...]} — the scores in the reference
service's format, in anonlink's order.
"""
import base64
import csv
import json
import pathlib

import anonlink
from anonlink.candidate_generation import find_candidate_pairs
from anonlink.similarities import dice_coefficient_accelerated
from bitarray import bitarray

here = pathlib.Path(__file__).parent
febrl4 = here.parents[2] / "data" / "febrl4"
assert anonlink.__version__ == "0.15.3", anonlink.__version__

clks = {side: [base64.b64decode(c) for c in json.loads((febrl4 / f"clks_{side}.json").read_text())["clks"]]
        for side in "ab"}
with open(febrl4 / "ground_truth.csv") as f:
    truth = [(int(r["row_index_a"]), int(r["row_index_b"])) for r in csv.DictReader(f)]


def side(s, lo, hi):
    return [[s, truth[i][0 if s == "a" else 1]] for i in range(lo, hi)]


FIVE = [
    side("a", 0, 200),
    side("b", 100, 300),
    side("a", 150, 350),
    side("b", 0, 100) + side("b", 250, 350),
    side("a", 300, 400) + side("b", 50, 150),
]


def blocks_of(clk):
    return [f"p{clk[3] & 1}", f"q{clk[40] >> 7}"]


def bits(clk):
    b = bitarray()
    b.frombytes(clk)
    return b


def make(name, parties, threshold, blocking):
    datasets = [[bits(clks[s][r]) for s, r in party] for party in parties]
    blocks = [[blocks_of(clks[s][r]) for s, r in party] for party in parties]
    blocking_f = (lambda d, r, _: blocks[d][r]) if blocking else None
    sims, (d0, d1), (r0, r1) = find_candidate_pairs(datasets, dice_coefficient_accelerated, threshold,
                                                    blocking_f=blocking_f)
    out = {"threshold": threshold, "blocking": blocking, "parties": parties}
    if blocking:
        out["blocks"] = blocks
    out["similarity_scores"] = [[[d0[i], r0[i]], [d1[i], r1[i]], sims[i]] for i in range(len(sims))]
    # json writes floats with repr(), the reference service's format.
    (here / f"{name}.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(name, len(sims), "candidate pairs")


make("three_parties", FIVE[:3], 0.8, False)
make("five_parties", FIVE, 0.7, False)
make("five_parties_blocked", FIVE, 0.7, True)
