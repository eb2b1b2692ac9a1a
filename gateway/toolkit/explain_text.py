"""`rems-gateway explain` for a person at a terminal: the explanation as indented lines (the
same content as `--json`)."""

from __future__ import annotations

import json
from typing import Any

INDENT = "  "


def explanation_lines(explained: dict[str, Any]) -> list[str]:
    lines = [f"{explained['file']}: {explained['registry']}"]
    for item in explained["items"]:
        lines += ["", *_item(item)]
    return lines


def _item(item: dict[str, Any]) -> list[str]:
    if item["kind"] == "fhir":
        named = f"/{item['id']}" if item.get("id") else ""
        kind = f" ({item['type']})" if item.get("type") else ""
        lines = [f"{item['resource_type']}{named}{kind}"]
    else:
        lines = [_hl7_heading(item)]
    lines += [INDENT + w for w in _warnings(item.get("warnings", []))]
    if "patient" in item:
        lines += _patient(item["patient"])
    for entry in item.get("observations", []):
        lines += _observation(entry)
    for anc in item.get("ancs", []):
        lines += _anc(anc)
    for order in item.get("orders", []):
        lines += _order(order)
    if item.get("note"):
        lines.append(f"{INDENT}note: {item['note']}")
    if "answer" in item:
        lines += _answer(item["answer"])
    return lines


def _hl7_heading(item: dict[str, Any]) -> str:
    kind = item.get("message_type", "an unreadable message")
    sender = item.get("sender", "?")
    control = item.get("control_id", "?")
    heading = f"{kind} from {sender}, control id {control}"
    if item.get("at"):
        heading += f" (at {item['at']})"
    return heading + (": refused before the store" if item.get("refused") else "")


def _warnings(problems: list[dict[str, str]]) -> list[str]:
    return [f"{p['severity']} {p['code'] or '-'} at {p['location']}: {p['text']}" for p in problems]


def _patient(patient: dict[str, Any]) -> list[str]:
    status = patient["status"]
    named = f" {patient['patient']}" if patient.get("patient") else ""
    lines = [f"{INDENT}patient: {status}{named}"]
    for c in patient["candidates"]:
        system = c["system"] or "(no system)"
        lines.append(f"{INDENT * 2}{c['field']} {system}|{c['value']} (rule {c['rule']})")
    if not patient["candidates"]:
        lines.append(f"{INDENT * 2}no identifier")
    lines.append(f"{INDENT * 2}{patient['why']}")
    return lines


def _observation(entry: dict[str, Any]) -> list[str]:
    where = entry.get("location", "Observation")
    code = " ".join(str(part) for part in (entry.get("code"), entry.get("text")) if part)
    if entry.get("loinc") and entry.get("loinc") != entry.get("code"):
        code += f" (LOINC {entry['loinc']})"
    value = f" = {entry['value']} {entry.get('unit', '')}".rstrip() if "value" in entry else ""
    line = f"{INDENT}{where}  {code or '(no code)'}{value}"
    if "ignored" in entry:
        line += f" — ignored: {entry['ignored']}"
    elif entry.get("anc_per_ul") is not None or "category" in entry:
        line += f" → {_count(entry)}"
    elif entry.get("per_ul") is not None:
        line += f" → WBC {entry['per_ul']}/µL (an input of the derived ANC)"
    elif entry.get("percent") is not None:
        line += f" → {entry['percent']} % (an input of the derived ANC)"
    elif entry.get("role"):
        line += f" → {entry['role']}: not readable (below)"
    lines = [line]
    lines += [INDENT * 2 + w for w in _warnings(entry.get("warnings", []))]
    lines += [f"{INDENT * 2}{f['code']}: {f['text']}" for f in entry.get("findings", [])]
    return lines


def _count(anc: dict[str, Any]) -> str:
    if anc.get("anc_per_ul") is None:
        return "ANC: no usable value"
    category = anc.get("category") or "no category"
    usable = "usable" if anc.get("usable") else "not usable"
    return f"ANC {anc['anc_per_ul']}/µL, {category} ({usable})"


def _anc(anc: dict[str, Any]) -> list[str]:
    if not anc["derived"]:
        return []  # shown with its OBX / Observation
    specimen = anc.get("specimen") or f"drawn {anc['drawn']}"
    lines = [f"{INDENT}derived ANC of specimen {specimen}: {_count(anc)}"]
    return lines + [f"{INDENT * 2}{f['code']}: {f['text']}" for f in anc.get("findings", [])]


def _order(order: dict[str, Any]) -> list[str]:
    where = order.get("location", "order")
    placer = f" {order['placer']}" if order.get("placer") else ""
    lines = [
        f"{INDENT}{where}{placer}: drug {order['drug'] or '?'}, pharmacy {order['pharmacy']}, "
        f"prescriber {order['prescriber']}, {order['setting']}, {order['days_supply']} days"
        + (", discharge" if order["discharge"] else "")
        + (", pharmacist override (a check applies none)" if order["override"] else "")
    ]
    lines += [INDENT * 2 + w for w in _warnings(order.get("warnings", []))]
    decision = order.get("decision")
    if decision is not None:
        lines.append(f"{INDENT * 2}decision: {decision['outcome'] or 'none'}")
        for kind in ("reasons", "warnings"):
            for f in decision.get(kind) or []:
                lines.append(f"{INDENT * 3}{kind[:-1]} {f['code']}: {f['text']}")
        if decision.get("note"):
            lines.append(f"{INDENT * 3}{decision['note']}")
    return lines


def _answer(answer: dict[str, Any]) -> list[str]:
    if "operation_outcome" in answer:
        lines = [f"{INDENT}answer: HTTP {answer['status']}, OperationOutcome:"]
        body = json.dumps(answer["operation_outcome"], indent=2, ensure_ascii=False)
        lines += [INDENT * 2 + line for line in body.splitlines()]
    elif "code" in answer:
        sent = "" if answer.get("sent", True) else " — not sent: MSH-15 asks for none"
        lines = [f"{INDENT}answer: {answer['code']} ({answer.get('disposition', '')}){sent}"]
        lines += [INDENT * 2 + s for s in answer.get("text", "").split("\r") if s]
    else:
        lines = [f"{INDENT}answer: -"]
    if answer.get("note"):
        lines.append(f"{INDENT * 2}{answer['note']}")
    return lines
