from promptflow.core import log_metric, tool


@tool
def calculate_category_counts(categories: list[str]):
    counts: dict[str, int] = {}
    for category in categories:
        counts[category] = counts.get(category, 0) + 1
    for category, count in counts.items():
        log_metric(key=category, value=count)
    return counts
