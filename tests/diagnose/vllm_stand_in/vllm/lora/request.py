"""The stand-in's ``LoRARequest`` (see ``vllm/__init__.py``): it keeps its arguments for the log."""


class LoRARequest:
    def __init__(self, name: str, lora_id: int, path: str):
        self.args = [name, lora_id, path]
