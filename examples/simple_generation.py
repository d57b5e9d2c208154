"""Simple generation: load a model and answer a few chat questions with the offline API.

    python examples/simple_generation.py [--model data/mili-tiny-qwen3]
"""

import argparse

from mili import LLM, SamplingParams
from mili.exercise import repo_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(repo_root() / "data" / "mili-tiny-qwen3"))
    args = parser.parse_args()

    llm = LLM(args.model)
    questions = ["What is 17 + 25?", "Sort the numbers:\n9, 2, 7", "Reverse the words:\nred green blue"]
    greedy = SamplingParams(temperature=0, max_tokens=32)
    for question in questions:
        output = llm.chat([{"role": "user", "content": question}], greedy, use_tqdm=False)[0]
        answer = output.outputs[0]
        print(f"Q: {question!r}\nA: {answer.text!r}  ({len(answer.token_ids)} tokens, {answer.finish_reason})\n")


if __name__ == "__main__":
    main()
