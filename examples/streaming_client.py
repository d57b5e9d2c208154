"""Streaming from the server with the official openai client, token by token.

    python examples/streaming_client.py --base-url http://127.0.0.1:8000/v1   # a running `mili serve`
    python examples/streaming_client.py                                       # starts one for the example

Without --base-url the example starts `mili serve` with the tiny model on a free port and
stops it (SIGTERM, a graceful drain) at the end.
"""

import argparse
import contextlib
import sys

import openai

from mili.exercise import repo_root
from mili.server.launch import launch_server


def stream_answer(client: openai.OpenAI, model: str, question: str) -> str:
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            temperature=0, max_tokens=32, stream=True,
                                            stream_options={"include_usage": True})
    text = ""
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content or ""
            text += piece
            print(piece, end="", flush=True)
            if choice.finish_reason:
                print(f"   [finish_reason={choice.finish_reason}]")
        if chunk.usage:
            print(f"   [usage: {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens]")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1 (default: start a server)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--model", default=str(repo_root() / "data" / "mili-tiny-qwen3"),
                        help="the model the started server loads")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            server = stack.enter_context(launch_server(args.model, args=["--num-kv-blocks", "256"]))
            base_url = server.url + "/v1"
        client = openai.OpenAI(base_url=base_url, api_key=args.api_key)
        model = client.models.list().data[0].id
        print(f"server {base_url}, model {model}", file=sys.stderr)
        for question in ("What is 17 + 25?", "Reverse the words:\nred green blue"):
            print(f"Q: {question!r}\nA: ", end="")
            stream_answer(client, model, question)


if __name__ == "__main__":
    main()
