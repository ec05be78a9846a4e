"""Builds tests/data/mail/*.eml and expected.json: mail as the desk's customers' clients
write it, and every breakage the parser must survive. Run from the repository root:

    .venv/bin/python tests/data/build_mail_corpus.py

The expectations are written here by hand, next to each message, not taken from the parser.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import quopri
import struct
import zlib
from pathlib import Path

import compressed_rtf
from PIL import Image

OUT = Path(__file__).parent / "mail"
CORPUS: dict[str, tuple[bytes, dict[str, object]]] = {}


def png(width: int, height: int, seed: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + bytes([(seed * 37 + x) % 256 for x in range(width * 3)])
                    for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def pil_image(fmt: str, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def qp(text: str, charset: str) -> str:
    return quopri.encodestring(text.encode(charset)).decode("ascii")


def headers(subject: str = "Test", sender: str = "Ivan Petrov <ivan@customer.ru>",
            extra: str = "", msgid: str = "<m1@customer.ru>") -> str:
    return (f"From: {sender}\r\nTo: support@omnivox.ru\r\nSubject: {subject}\r\n"
            f"Date: Mon, 15 Jan 2024 10:00:00 +0300\r\nMessage-ID: {msgid}\r\n"
            f"MIME-Version: 1.0\r\n{extra}")


def add(name: str, raw: bytes | str, expect: dict[str, object]) -> None:
    assert name not in CORPUS, name
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    CORPUS[name] = (data, expect)


def plain(name: str, subject: str, body: str, expect: dict[str, object], *,
          charset: str = "utf-8", declared: str | None = "utf-8", extra: str = "",
          sender: str = "Ivan Petrov <ivan@customer.ru>", cte: str = "8bit") -> None:
    ctype = "text/plain" + (f"; charset={declared}" if declared else "")
    if not subject.isascii():
        subject = f"=?utf-8?B?{base64.b64encode(subject.encode()).decode()}?="
    if not sender.isascii():
        sender = f"=?utf-8?B?{base64.b64encode(sender.encode()).decode()}?="
    head = headers(subject, sender, extra) + f"Content-Type: {ctype}\r\n"
    if cte == "quoted-printable":
        payload = quopri.encodestring(body.encode(charset)).replace(b"\n", b"\r\n")
    elif cte == "base64":
        payload = b64(body.encode(charset)).encode()
    else:
        payload = body.replace("\n", "\r\n").encode(charset)
    head += f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    add(name, head.encode("ascii") + payload, expect)


ENV_RU = ("Здравствуйте!\nПосле обновления не работает AgentZone у одного оператора.\n\n"
          "Версия ОС: Windows 10 Pro\nБраузер: Google Chrome 120.0.6099.130\n"
          "Версия OmniVOX: AgentZone 3.2.1\n")
ENV_RU_EXPECT = {"os": "Windows", "os_version": "10", "product": "AgentZone",
                 "product_version": "3.2.1", "browser": "Chrome",
                 "browser_version": "120.0.6099.130"}
ENV_EN = ("Hello,\nThe chat widget shows an error for one agent.\n\n"
          "OS version: Ubuntu 22.04\nBrowser: Firefox 121.0\nOmniVOX version: Chat 2.4\n")
ENV_EN_EXPECT = {"os": "Ubuntu", "os_version": "22.04", "product": "Chat",
                 "product_version": "2.4", "browser": "Firefox", "browser_version": "121.0"}


def clients() -> None:
    # Outlook: multipart/alternative, cp1251 quoted-printable, HTML with Word markup.
    html = ("<html><head><style>p.MsoNormal{margin:0}</style></head><body lang=RU>"
            "<div class=WordSection1><p class=MsoNormal>Здравствуйте!<o:p></o:p></p>"
            "<p class=MsoNormal>После обновления не работает AgentZone у одного оператора."
            "</p><p class=MsoNormal>Версия ОС: Windows 10 Pro<br>Браузер: Google Chrome "
            "120.0.6099.130<br>Версия OmniVOX: AgentZone 3.2.1</p></div></body></html>")
    raw = (headers("Ошибка AgentZone", extra="X-Mailer: Microsoft Outlook 16.0\r\n"
                   "Content-Type: multipart/alternative; boundary=\"----=_NextPart_000\"\r\n")
           .replace("Subject: Ошибка AgentZone", "Subject: =?windows-1251?B?"
                    + base64.b64encode("Ошибка AgentZone".encode("cp1251")).decode() + "?=")
           + "\r\n------=_NextPart_000\r\nContent-Type: text/plain; charset=\"windows-1251\""
           "\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp(ENV_RU, "cp1251")
           + "\r\n------=_NextPart_000\r\nContent-Type: text/html; charset=\"windows-1251\""
           "\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qp(html, "cp1251")
           + "\r\n------=_NextPart_000--\r\n")
    add("outlook_ru_alternative", raw, {
        "subject": "Ошибка AgentZone", "from": "ivan@customer.ru", "language": "ru",
        "kind": "incident", "priority": "P2", "environment": ENV_RU_EXPECT, "missing": [],
        "html_present": True, "new_text_contains": ["Версия ОС: Windows 10 Pro"]})

    quote_ru = ("Да, проблема повторилась. Браузер: Chrome 121\n\n"
                "________________________________\nОт: Служба поддержки OmniVOX "
                "<support@omnivox.ru>\nОтправлено: 15 января 2024 г. 11:00\nКому: Иван "
                "Петров\nТема: [OV-2026-000045] Ошибка AgentZone\n\nУточните версию браузера.\n")
    plain("outlook_ru_reply", "RE: [OV-2026-000045] Ошибка AgentZone", quote_ru, {
        "registration_number": "OV-2026-000045", "new_text": "Да, проблема повторилась. "
        "Браузер: Chrome 121", "quoted_contains": ["Уточните версию браузера."],
        "in_reply_to": "<ack45@omnivox.ru>", "references": ["<ack45@omnivox.ru>"],
        "environment": {"browser": "Chrome", "browser_version": "121"}},
        extra="In-Reply-To: <ack45@omnivox.ru>\r\nReferences: <ack45@omnivox.ru>\r\n")

    plain("outlook_en_original_message", "RE: [OV-2026-000046] Chat issue",
          "Still broken after restart.\n\n-----Original Message-----\nFrom: OmniVOX Support "
          "<support@omnivox.ru>\nSent: Monday, January 15, 2024 11:00 AM\nTo: Ivan\n"
          "Subject: [OV-2026-000046] Chat issue\n\nPlease restart the service.\n",
          {"new_text": "Still broken after restart.", "registration_number": "OV-2026-000046",
           "quoted_contains": ["Please restart the service."], "language": "en"})

    html = ("<div>Работает, спасибо.</div><div style='border:none;border-top:solid #E1E1E1 "
            "1.0pt'><p><b>От:</b> Служба поддержки &lt;support@omnivox.ru&gt;<br><b>"
            "Отправлено:</b> 15 января 2024 г. 11:00<br><b>Кому:</b> Иван<br><b>Тема:</b> "
            "[OV-2026-000047] Чат</p></div><p>Перезапустите сервис.</p>")
    raw = (headers("RE: [OV-2026-000047] Чат", extra="Content-Type: text/html; "
                   "charset=utf-8\r\n").replace("RE: [OV-2026-000047] Чат",
                                                 "RE: [OV-2026-000047] Chat")
           + "\r\n" + html + "\r\n")
    add("outlook_ru_html_reply", raw, {"new_text": "Работает, спасибо.",
                                       "quoted_contains": ["Перезапустите сервис."]})
    html = ("<div dir=\"ltr\">Attached the log, Chrome 119.</div><br><div class=\"gmail_quote"
            "\"><div dir=\"ltr\" class=\"gmail_attr\">On Mon, Jan 15, 2024 at 10:00 AM OmniVOX"
            " Support &lt;<a href=\"mailto:support@omnivox.ru\">support@omnivox.ru</a>&gt; "
            "wrote:<br></div><blockquote class=\"gmail_quote\">Please attach the log.</blockquote>"
            "</div>")
    raw = (headers("Re: log", extra="Content-Type: multipart/alternative; boundary=g\r\n")
           + "\r\n--g\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n" + html
           + "\r\n--g--\r\n")
    add("gmail_en_html_reply", raw, {"new_text": "Attached the log, Chrome 119.",
                                     "quoted_contains": ["> Please attach the log."]})
    plain("outlook_forward_keeps_content", "FW: Ошибка у оператора",
          "Коллеги, пересылаю.\n\n________________________________\nFrom: Ольга "
          "<olga@customer.ru>\nSent: Monday, January 15, 2024 9:00 AM\nTo: Иван\n"
          "Subject: Ошибка у оператора\n\nНе работает AgentZone 3.2 на Windows 11.\n",
          {"new_text_contains": ["Коллеги, пересылаю.", "Не работает AgentZone 3.2"],
           "quoted_text": "", "environment": {"os_version": "11", "product_version": "3.2"}})

    plain("outlook_en_from_block", "RE: licence question",
          "Thanks, that answers it.\n\nFrom: OmniVOX Support <support@omnivox.ru>\n"
          "Sent: Tuesday, January 16, 2024 9:12 AM\nTo: Ivan Petrov <ivan@customer.ru>\n"
          "Subject: RE: licence question\n\nYou can move the licence in the admin panel.\n",
          {"new_text": "Thanks, that answers it.",
           "quoted_contains": ["You can move the licence"]})

    plain("gmail_en_reply", "Re: [OV-2026-000050] Agents cannot log in",
          "The issue is back on Chrome 120.\n\nOn Mon, Jan 15, 2024 at 10:00 AM OmniVOX "
          "Support <support@omnivox.ru> wrote:\n> Is it still happening?\n>\n> Regards\n",
          {"new_text": "The issue is back on Chrome 120.",
           "quoted_contains": ["> Is it still happening?"],
           "environment": {"browser": "Chrome", "browser_version": "120"}})

    plain("gmail_en_wrapped_attribution", "Re: Agents cannot log in",
          "Here is the screenshot you asked for.\n\nOn Mon, 15 Jan 2024 at 10:00, OmniVOX "
          "Support <\nsupport@omnivox.ru> wrote:\n\n> Please send a screenshot.\n",
          {"new_text": "Here is the screenshot you asked for.",
           "quoted_contains": ["Please send a screenshot."]})

    plain("gmail_ru_reply", "Re: Ошибка входа",
          "Версия OmniVOX 3.4.2, продукт AgentZone.\n\nпн, 15 янв. 2024 г. в 10:00, "
          "Служба поддержки <support@omnivox.ru>:\n\n> Укажите версию продукта.\n",
          {"new_text": "Версия OmniVOX 3.4.2, продукт AgentZone.",
           "quoted_contains": ["Укажите версию продукта."],
           "environment": {"product": "AgentZone", "product_version": "3.4.2"}})

    plain("thunderbird_ru_reply", "Re: Не работает чат",
          "Обновили до 2.5, всё равно не работает.\n\n15.01.2024 10:00, Служба поддержки "
          "пишет:\n> Обновите OmniVOX Chat до 2.5.\n",
          {"new_text": "Обновили до 2.5, всё равно не работает.",
           "quoted_contains": ["Обновите OmniVOX Chat до 2.5."]},
          declared="utf-8; format=flowed")

    plain("thunderbird_flowed", "Длинная строка",
          "Это длинная строка, которую Thunderbird разбил \nмягким переносом.\n\n"
          "15.01.2024 10:00, Поддержка пишет:\n> Цитата тоже \n> с переносом.\n",
          {"new_text": "Это длинная строка, которую Thunderbird разбил мягким переносом.",
           "quoted_contains": ["> Цитата тоже с переносом."]},
          declared="utf-8; format=flowed")
    mixed("apple_inline_text_file", "log", "Лог приложен.", [
        "Content-Type: text/plain; charset=utf-8; name=console.txt\r\nContent-Disposition: "
        "inline; filename=console.txt\r\n\r\nTypeError: x is undefined\r\n"],
        {"attachment_names": ["console.txt"], "text_excludes": ["TypeError"]})
    plain("thunderbird_en_reply", "Re: Queue not updating",
          "Yes, all operators are affected.\n\nOn 15.01.2024 10:00, OmniVOX Support wrote:\n"
          "> Is it one operator or everyone?\n",
          {"new_text": "Yes, all operators are affected.", "kind": "problem",
           "priority": "P1"})

    apple = (headers("Re: Экран оператора", extra="Content-Type: multipart/mixed; "
                     "boundary=\"Apple-Mail=_1\"\r\nX-Mailer: Apple Mail (2.3774)\r\n")
             + "\r\n--Apple-Mail=_1\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nВот снимок экрана:\r\n"
             "--Apple-Mail=_1\r\nContent-Disposition: inline; filename=\"Снимок экрана.png\"\r\n"
             "Content-Type: image/png; name=\"Снимок экрана.png\"\r\nContent-Transfer-Encoding:"
             " base64\r\n\r\n" + b64(png(40, 30, 1)) + "\r\n--Apple-Mail=_1\r\nContent-Type: "
             "text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nmacOS 14.2, "
             "Safari 17.2\r\n\r\n15 янв. 2024 г., в 10:00, Служба поддержки <support@omnivox"
             ".ru> написал(а):\r\n\r\n> Пришлите снимок.\r\n--Apple-Mail=_1--\r\n")
    add("apple_mail_ru", apple, {
        "new_text_contains": ["Вот снимок экрана:", "macOS 14.2, Safari 17.2"],
        "quoted_contains": ["Пришлите снимок."], "screenshot_names": ["Снимок экрана.png"],
        "environment": {"os": "macOS", "os_version": "14.2", "browser": "Safari",
                        "browser_version": "17.2"}})

    plain("apple_mail_en", "Re: Chat transcript export",
          "Export works now, thanks!\n\nOn 15 Jan 2024, at 10:00, OmniVOX Support "
          "<support@omnivox.ru> wrote:\n\n> Try exporting again.\n",
          {"new_text": "Export works now, thanks!", "quoted_contains": ["Try exporting again."]})

    yhtml = ("<div>Ошибка осталась, Яндекс Браузер 24.1.</div><div>&nbsp;</div>"
             "<div>15.01.2024, 10:00, \"Служба поддержки\" &lt;support@omnivox.ru&gt;:</div>"
             "<blockquote><div>Какой у вас браузер?</div></blockquote>")
    raw = (headers("Re: Ошибка", extra="Content-Type: text/html; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: base64\r\n") + "\r\n"
           + b64(yhtml.encode()))
    add("yandex_ru_html_reply", raw, {
        "new_text": "Ошибка осталась, Яндекс Браузер 24.1.",
        "quoted_contains": ["Какой у вас браузер?"],
        "environment": {"browser": "Yandex Browser", "browser_version": "24.1"},
        "html_present": True})

    plain("mailru_reply", "Re: Чат не открывается",
          "Чат не открывается ни у кого, весь колл-центр стоит!\n\n\nПонедельник, 15 января "
          "2024, 10:00 +03:00 от Служба поддержки <support@omnivox.ru>:\n\n> Опишите "
          "проблему.\n",
          {"new_text": "Чат не открывается ни у кого, весь колл-центр стоит!",
           "kind": "problem", "priority": "P1", "quoted_contains": ["Опишите проблему."]})

    plain("iphone_ru_signature", "Не грузится AgentZone",
          "Не грузится AgentZone на iOS 17.2\n\nОтправлено с iPhone\n",
          {"new_text": "Не грузится AgentZone на iOS 17.2", "signature": "Отправлено с iPhone",
           "environment": {"os": "iOS", "os_version": "17.2", "product": "AgentZone"}})

    plain("android_outlook_en", "Login error",
          "Login error on Android 14 in Chrome 120.\n\nGet Outlook for Android\n",
          {"new_text": "Login error on Android 14 in Chrome 120.",
           "environment": {"os": "Android", "os_version": "14", "browser": "Chrome"}})

    plain("yandex_mobile_signature", "Ошибка",
          "Ошибка при входе, Android 13.\n\n-- \nОтправлено из мобильной Яндекс Почты\n",
          {"new_text": "Ошибка при входе, Android 13.",
           "signature_contains": ["Отправлено из мобильной Яндекс Почты"]})

    plain("mailru_mobile_signature", "Вопрос",
          "Подскажите, как настроить очередь?\n\nОтправлено из мобильной Почты Mail.ru\n",
          {"new_text": "Подскажите, как настроить очередь?", "kind": "service_request",
           "priority": "P3"})

    plain("bottom_posted_reply", "Re: Проблема",
          "> Укажите версию ОС.\n\nВерсия ОС: Astra Linux SE 1.7.4\n",
          {"new_text": "Версия ОС: Astra Linux SE 1.7.4",
           "quoted_contains": ["> Укажите версию ОС."],
           "environment": {"os": "Astra Linux", "os_version": "1.7.4"}})

    plain("dash_signature", "Chat question",
          "How do I export chat history?\n\n-- \nIvan Petrov\nACME Contact Center\n",
          {"new_text": "How do I export chat history?", "kind": "service_request",
           "signature_contains": ["ACME Contact Center"]})

    plain("valediction_signature", "Ошибка при звонке",
          "При звонке ошибка 503.\n\nС уважением,\nИван Петров\nООО Ромашка\n"
          "+7 495 000-00-00\n",
          {"new_text": "При звонке ошибка 503.", "signature_contains": ["ООО Ромашка"]})


def charset_accidents() -> None:
    body = ("Здравствуйте! У нас не работает AgentZone 3.2.1, Windows 10, хром 120.\n"
            "Помогите, пожалуйста.\n")
    env = {"os": "Windows", "os_version": "10", "product": "AgentZone",
           "product_version": "3.2.1", "browser": "Chrome", "browser_version": "120"}
    expect: dict[str, object] = {"text_contains": ["Здравствуйте! У нас не работает"],
                                 "environment": env, "no_mojibake": True}
    for name, actual, declared in (
            ("ascii_declared_cp1251", "cp1251", "us-ascii"),
            ("ascii_declared_koi8r", "koi8-r", "us-ascii"),
            ("latin1_declared_cp1251", "cp1251", "iso-8859-1"),
            ("latin1_declared_koi8r", "koi8-r", "iso-8859-1"),
            ("latin1_declared_utf8", "utf-8", "iso-8859-1"),
            ("cp1252_declared_cp1251", "cp1251", "windows-1252"),
            ("undeclared_cp1251", "cp1251", None),
            ("undeclared_koi8r", "koi8-r", None),
            ("undeclared_utf8", "utf-8", None),
            ("cp1251_declared_utf8", "utf-8", "windows-1251"),
            ("koi8r_declared_cp1251", "cp1251", "koi8-r"),
            ("utf8_declared_cp1251", "cp1251", "utf-8"),
            ("unknown_charset_cp1251", "cp1251", "x-unknown-cyr")):
        plain(name, "Ошибка AgentZone", body, {**expect, "warnings_nonempty": declared
                                                 not in (None,) or actual != "utf-8"},
              charset=actual, declared=declared)
    moji = body.encode("utf-8").decode("cp1251")
    plain("mojibake_body", "Ошибка", moji, expect, charset="utf-8", declared="utf-8")

    for i, (charset, phrase) in enumerate((
            ("utf-16", "Ошибка входа в AgentZone"), ("utf-7", "Ошибка в чате"),
            ("iso-2022-jp", "エラーが発生しました"), ("shift_jis", "エラーが発生しました"),
            ("euc-jp", "エラーが発生しました"), ("gb2312", "系统出现错误"),
            ("gb18030", "系统出现错误"), ("big5", "系統出現錯誤"),
            ("euc-kr", "오류가 발생했습니다"),
            ("iso-8859-2", "Błąd logowania, zażółć"), ("iso-8859-7", "Σφάλμα σύνδεσης"),
            ("koi8-u", "Помилка входу, ґанок і їжак"), ("cp866", "Ошибка входа"),
            ("mac-cyrillic", "Ошибка входа"), ("iso-8859-5", "Ошибка входа"),
            ("windows-1250", "Chyba přihlášení"), ("windows-1253", "Σφάλμα σύνδεσης"),
            ("iso-8859-9", "Giriş hatası oluştu"), ("iso-8859-15", "Erreur € à l'écran"),
            ("windows-1257", "Prisijungimo klaida ąčę"), ("tis-620", "เกิดข้อผิดพลาด"),
            ("iso-8859-8", "שגיאת התחברות"), ("windows-1256", "خطأ في تسجيل الدخول"),
            ("koi8-r", "Ошибка входа"))):
        cte = "base64" if charset in ("utf-16",) else (
            "7bit" if charset in ("utf-7", "iso-2022-jp") else "8bit")
        plain(f"charset_{i:02d}_{charset.replace('-', '_')}", "Charset test",
              f"{phrase}\n", {"text_contains": [phrase]}, charset=charset, declared=charset,
              cte=cte)

    words = [("koi8-r", "B", "Ошибка"), ("utf-8", "Q", " в чате"),
             ("windows-1251", "B", " OmniVOX")]
    encoded = []
    for charset, kind, word in words:
        data = word.encode(charset)
        if kind == "B":
            encoded.append(f"=?{charset}?B?{base64.b64encode(data).decode()}?=")
        else:
            encoded.append(f"=?{charset}?Q?{''.join(f'={b:02X}' for b in data)}?=")
    plain("rfc2047_mixed_charsets", " ".join(encoded), "Текст.\n",
          {"subject": "Ошибка в чате OmniVOX"})
    word = "Не работает очередь".encode()
    half = 7  # splits a two-byte character between the two encoded words
    subject = (f"=?UTF-8?B?{base64.b64encode(word[:half]).decode()}?=\r\n "
               f"=?UTF-8?B?{base64.b64encode(word[half:]).decode()}?=")
    plain("rfc2047_split_multibyte", subject, "Текст.\n", {"subject": "Не работает очередь"})
    plain("rfc2047_glued_and_lowercase", "RE:=?utf-8?q?=D0=BE=D1=88=D0=B8=D0=B1=D0=BA=D0=B0?=",
          "x\n", {"subject": "RE:ошибка"})
    raw = ("From: Иван Петров <ivan@customer.ru>\r\nTo: support@omnivox.ru\r\nSubject: "
           "Не работает AgentZone\r\nMessage-ID: <raw8@x>\r\nContent-Type: text/plain; "
           "charset=utf-8\r\n\r\nТекст\r\n").encode()
    add("raw_8bit_utf8_headers", raw, {"subject": "Не работает AgentZone",
                                       "sender_name": "Иван Петров"})
    add("raw_8bit_cp1251_headers", raw.decode().replace("utf-8", "windows-1251")
        .encode("cp1251"), {"subject": "Не работает AgentZone", "sender_name": "Иван Петров",
                            "no_mojibake": True})


def attachment(ctype: str, filename_params: str, data: bytes, disposition: str = "attachment"
               ) -> str:
    return (f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: {disposition}{filename_params}\r\n\r\n{b64(data)}\r\n")


def mixed(name: str, subject: str, text: str, parts: list[str], expect: dict[str, object],
          *, boundary: str = "b1", extra: str = "") -> None:
    raw = (headers(subject, extra=extra) + f"Content-Type: multipart/mixed; boundary=\"{boundary}\""
           f"\r\n\r\nThis is a multi-part message in MIME format.\r\n--{boundary}\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           f"{text}\r\n")
    for part in parts:
        raw += f"--{boundary}\r\n{part}"
    raw += f"--{boundary}--\r\n"
    add(name, raw, expect)


def mime_breakage() -> None:
    shot = png(64, 48, 2)
    mixed("rfc2231_filename", "Скриншот", "См. вложение.", [
        "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition:"
        " attachment;\r\n filename*0*=utf-8''%D0%BE%D1%88%D0%B8%D0%B1%D0%BA%D0%B0;\r\n"
        " filename*1*=%20%D0%B2%D1%85%D0%BE%D0%B4%D0%B0;\r\n filename*2=.png\r\n\r\n"
        + b64(shot) + "\r\n"],
        {"screenshot_names": ["ошибка входа.png"], "screenshot_sizes": [[64, 48]]})
    mixed("outlook_encoded_word_filename", "Screenshot", "Attached.", [attachment(
        "image/png; name=\"=?utf-8?B?0YHQutGA0LjQvS5wbmc=?=\"",
        "; filename=\"=?utf-8?B?0YHQutGA0LjQvS5wbmc=?=\"", shot)],
        {"screenshot_names": ["скрин.png"]})
    raw = (headers("Имя файла") + "Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\nФайл.\r\n--b1\r\nContent-Type: "
           "application/pdf\r\nContent-Disposition: attachment; filename=\"отчёт.pdf\"\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n"
           + b64(b"%PDF-1.4 test") + "\r\n--b1--\r\n").encode("utf-8")
    add("raw_8bit_filename", raw, {"attachment_names": ["отчёт.pdf"]})
    add("missing_content_type", (
        "From: ivan@customer.ru\r\nTo: support@omnivox.ru\r\nSubject: no type\r\n\r\n"
        "Ошибка в AgentZone 3.1, Windows 11\r\n").encode(),
        {"text_contains": ["Ошибка в AgentZone 3.1"],
         "environment": {"os_version": "11", "product_version": "3.1"}})
    mixed("part_without_content_type", "Part", "First.", [
        "Content-Transfer-Encoding: 8bit\r\n\r\nSecond part without type.\r\n"],
        {"text_contains": ["First.", "Second part without type."]})
    raw = (headers("Boundary") + "Content-Type: multipart/mixed; boundary=\"declared\"\r\n\r\n"
           "--actual\r\nContent-Type: text/plain\r\n\r\nText under another boundary.\r\n"
           "--actual\r\n" + attachment("image/png", "; filename=a.png", shot)
           + "--actual--\r\n")
    add("wrong_boundary", raw, {"text_contains": ["Text under another boundary."],
                                "screenshot_names": ["a.png"], "warnings_nonempty": True})
    raw = (headers("Unclosed") + "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
           "Content-Type: text/plain\r\n\r\nText of an unclosed multipart.\r\n--zz\r\n"
           + attachment("image/png", "; filename=b.png", shot))
    add("missing_close_boundary", raw, {"text_contains": ["Text of an unclosed multipart."],
                                        "screenshot_names": ["b.png"],
                                        "warnings_contain": ["closing boundary"]})
    raw = (headers("No boundary") + "Content-Type: multipart/mixed\r\n\r\n--guessme\r\n"
           "Content-Type: text/plain\r\n\r\nBoundary was not declared.\r\n--guessme--\r\n")
    add("no_boundary_param", raw, {"text_contains": ["Boundary was not declared."],
                                   "warnings_nonempty": True})
    raw = (headers("Mixed endings") + "Content-Type: multipart/mixed; boundary=mx\r\n\n--mx\n"
           "Content-Type: text/plain\r\n\nLF and CRLF mixed.\n--mx\r\n"
           + attachment("image/png", "; filename=c.png", shot).replace("\r\n", "\n")
           + "--mx--\n")
    add("mixed_line_endings", raw, {"text_contains": ["LF and CRLF mixed."],
                                    "screenshot_names": ["c.png"]})
    add("lf_only", (headers("LF only") + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                    "Only LF line ends.\r\nSecond line.\r\n").replace("\r\n", "\n"),
        {"text": "Only LF line ends.\nSecond line."})
    log = b"2024-01-15 10:00:00 ERROR agentzone: connection refused\n" * 3
    lines = "".join(binascii.b2a_uu(log[i:i + 45]).decode() for i in range(0, len(log), 45))
    plain("uuencoded_in_text", "Лог", f"Прикладываю лог.\nbegin 644 agent.log\n{lines}`\nend\n"
          "Спасибо.\n", {"attachment_names": ["agent.log"], "attachment_sizes": [len(log)],
                         "text_contains": ["Прикладываю лог.", "Спасибо."],
                         "text_excludes": ["begin 644"]})
    mixed("uuencode_cte_part", "UU part", "See file.", [
        "Content-Type: application/octet-stream; name=dump.bin\r\nContent-Transfer-Encoding:"
        " x-uuencode\r\nContent-Disposition: attachment; filename=dump.bin\r\n\r\n"
        f"begin 644 dump.bin\r\n{lines.replace(chr(10), chr(13) + chr(10))}`\r\nend\r\n"],
        {"attachment_names": ["dump.bin"], "attachment_sizes": [len(log)]})
    mixed("tnef_winmail", "Outlook RTF", "", [attachment(
        "application/ms-tnef; name=winmail.dat", "; filename=winmail.dat", tnef())],
        {"text_contains": ["Текст из TNEF"], "screenshot_names": ["screen.png"],
         "attachment_names": ["config.xml"]})
    mixed("tnef_rtf_body", "Outlook RTF", "", [attachment(
        "application/ms-tnef; name=winmail.dat", "; filename=winmail.dat", tnef_rtf())],
        {"text_contains": ["Текст RTF: не работает Chat 2.2"], "attachment_names": [],
         "environment": {"product": "Chat", "product_version": "2.2"}})
    mixed("tnef_damaged", "Outlook RTF", "Body.", [attachment(
        "application/ms-tnef; name=winmail.dat", "; filename=winmail.dat", b"\x78\x9f\x3e\x22"
        + b"\x00" * 3)], {"attachment_names": ["winmail.dat"], "warnings_contain": ["TNEF"]})
    inner = (headers("Ошибка у коллеги", sender="Ольга <olga@customer.ru>",
                     msgid="<inner@customer.ru>")
             + "Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\nContent-Type: "
             "text/plain; charset=utf-8\r\n\r\nУ меня не работает Chat 2.4 в Edge 120.\r\n"
             "--in\r\n" + attachment("image/png", "; filename=olga.png", png(20, 20, 3))
             + "--in--\r\n")
    mixed("forwarded_rfc822", "Fwd: Ошибка у коллеги", "Пересылаю письмо коллеги.", [
        "Content-Type: message/rfc822\r\nContent-Disposition: attachment; "
        f"filename=\"msg.eml\"\r\n\r\n{inner}"],
        {"text_contains": ["Пересылаю письмо коллеги.", "У меня не работает Chat 2.4"],
         "screenshot_names": ["olga.png"], "forwarded_screenshots": ["olga.png"],
         "forwarded_subjects": ["Ошибка у коллеги"],
         "environment": {"product": "Chat", "product_version": "2.4", "browser": "Edge"}})
    mixed("forwarded_rfc822_base64", "Fwd: Ошибка", "См. ниже.", [
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64(inner.encode()) + "\r\n"],
        {"text_contains": ["У меня не работает Chat 2.4"], "forwarded_screenshots": ["olga.png"]})
    signed_body = ("Content-Type: text/plain; charset=utf-8\r\n\r\nПодписанное письмо: "
                   "ошибка в AgentZone 3.3.\r\n")
    raw = (headers("S/MIME") + "Content-Type: multipart/signed; protocol=\"application/"
           "pkcs7-signature\"; micalg=sha-256; boundary=sig\r\n\r\n--sig\r\n" + signed_body
           + "--sig\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
           "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
           f"filename=smime.p7s\r\n\r\n{b64(b'0' * 300)}\r\n--sig--\r\n")
    add("smime_signed", raw, {"text_contains": ["Подписанное письмо"], "attachment_names": [],
                              "signed": "S/MIME"})
    raw = (headers("PGP/MIME") + "Content-Type: multipart/signed; micalg=pgp-sha256; "
           "protocol=\"application/pgp-signature\"; boundary=pg\r\n\r\n--pg\r\n"
           "Content-Type: multipart/mixed; boundary=pm\r\n\r\n--pm\r\n" + signed_body
           + "--pm\r\n" + attachment("image/png", "; filename=pgp.png", shot) + "--pm--\r\n"
           "--pg\r\nContent-Type: application/pgp-signature; name=signature.asc\r\n\r\n"
           "-----BEGIN PGP SIGNATURE-----\r\n\r\niQEz\r\n-----END PGP SIGNATURE-----\r\n"
           "--pg--\r\n")
    add("pgp_mime_signed", raw, {"text_contains": ["Подписанное письмо"],
                                 "screenshot_names": ["pgp.png"], "attachment_names": [],
                                 "signed": "PGP/MIME"})
    plain("pgp_inline_signed", "PGP inline",
          "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nОшибка в Chat 2.1.\n"
          "- -- не подпись\n-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n",
          {"text_contains": ["Ошибка в Chat 2.1.", "-- не подпись"],
           "text_excludes": ["BEGIN PGP"], "signed": "PGP inline"})
    enveloped = der(0x30, der(0x06, bytes.fromhex("2a864886f70d010703"))
                    + der(0xA0, der(0x30, der(0x02, b"\x00"))))
    mixed("smime_encrypted", "Encrypted", "", [attachment(
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
        "; filename=smime.p7m", enveloped)],
        {"attachment_names": ["smime.p7m"], "warnings_contain": ["encrypted"]})
    inner_entity = ("Content-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\nContent-Type: "
                    "text/plain; charset=utf-8\r\n\r\nТекст внутри S/MIME: AgentZone 3.5.\r\n"
                    "--in\r\n" + attachment("image/png", "; filename=p7.png", png(12, 12, 4))
                    + "--in--\r\n").encode()
    raw = (headers("Opaque signed") + "Content-Type: application/pkcs7-mime; smime-type="
           "signed-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=smime.p7m\r\n\r\n"
           + b64(cms_signed(inner_entity, indefinite=False)) + "\r\n")
    add("smime_opaque_signed_der", raw, {
        "text_contains": ["Текст внутри S/MIME"], "screenshot_names": ["p7.png"],
        "attachment_names": [], "signed": "S/MIME",
        "environment": {"product": "AgentZone", "product_version": "3.5"}})
    add("smime_opaque_signed_ber", raw.replace(
        b64(cms_signed(inner_entity, indefinite=False)),
        b64(cms_signed(inner_entity, indefinite=True))),
        {"text_contains": ["Текст внутри S/MIME"], "screenshot_names": ["p7.png"],
         "attachment_names": [], "signed": "S/MIME"})
    line_by_line = "\r\n".join(base64.b64encode(chunk).decode() for chunk in
                               (b"first line\n", b"second\n", b"third line of the log\n"))
    mixed("base64_padded_per_line", "log", "Лог ниже.", [
        "Content-Type: text/plain; name=app.log\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename=app.log\r\n\r\n{line_by_line}\r\n"],
        {"attachment_names": ["app.log"], "attachment_sizes": [40]})
    mixed("base64_damaged", "damaged", "Файл повреждён.", [
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=broken.bin\r\n\r\n"
        "QUJDREVGR0hJSktMTU5PUA*!!\r\nQUJD\r\nQ\r\n"],
        {"attachment_names": ["broken.bin"], "text_contains": ["Файл повреждён."]})
    add("base64_label_on_plain_text", (
        headers("cte") + "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nТекст, который объявлен как base64.\r\n"
        ).encode(), {"text_contains": ["Текст, который объявлен как base64."],
                     "warnings_contain": ["not base64"]})
    add("html_unclosed_head", headers("head") + "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n<html><head><meta charset=utf-8><body><p>Текст после незакрытого head.</p>\r\n",
        {"text": "Текст после незакрытого head."})
    plain("unknown_cte", "cte", "Text with odd encoding label.\n",
          {"text_contains": ["Text with odd encoding label."],
           "warnings_contain": ["Content-Transfer-Encoding"]}, cte="x-strange")
    add("garbage_header_line", ("From: ivan@customer.ru\r\nSubject: garbage\r\nthis is not a "
                                "header\r\nTo: x@y\r\n\r\nBody.\r\n"),
        {"subject": "garbage", "text_contains": ["this is not a header"],
         "warnings_nonempty": True})
    add("mbox_from_line", "From ivan@customer.ru Mon Jan 15 10:00:00 2024\r\n"
        + headers("mbox") + "Content-Type: text/plain\r\n\r\nBody after mbox line.\r\n",
        {"subject": "mbox", "text": "Body after mbox line."})
    add("empty_file", b"", {"subject": "", "text": "", "warnings_nonempty": True})
    add("headers_only", headers("Only headers"), {"subject": "Only headers", "text": ""})
    add("binary_garbage", bytes(range(256)) * 8, {"warnings_nonempty": True})
    deep = "Content-Type: text/plain\r\n\r\nDeepest text."
    for level in range(40):
        deep = (f"Content-Type: multipart/mixed; boundary=d{level}\r\n\r\n--d{level}\r\n"
                f"{deep}\r\n--d{level}--\r\n")
    add("deep_nesting", headers("Deep") + deep, {"warnings_contain": ["nesting"]})
    many = headers("Many parts") + "Content-Type: multipart/mixed; boundary=m\r\n\r\n" + "".join(
        f"--m\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(1500)) + "--m--\r\n"
    add("many_parts", many, {"warnings_contain": ["more than 1000 MIME parts; the 501 remaining"],
                             "text_contains": ["part 0", "part 900"]})


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def ber_indefinite(tag: int, content: bytes) -> bytes:
    return bytes([tag, 0x80]) + content + b"\x00\x00"


def cms_signed(content: bytes, *, indefinite: bool) -> bytes:
    """RFC 5652 SignedData carrying ``content``; Outlook writes BER with indefinite lengths
    and the content as a constructed OCTET STRING of chunks."""
    data_oid = der(0x06, bytes.fromhex("2a864886f70d010701"))
    signed_oid = der(0x06, bytes.fromhex("2a864886f70d010702"))
    if indefinite:
        chunks = b"".join(der(0x04, content[i:i + 1000]) for i in range(0, len(content), 1000))
        encap = ber_indefinite(0x30, data_oid + ber_indefinite(
            0xA0, ber_indefinite(0x24, chunks)))
        body = der(0x02, b"\x01") + der(0x31, b"") + encap + der(0x31, b"")
        return ber_indefinite(0x30, signed_oid + ber_indefinite(0xA0, ber_indefinite(
            0x30, body)))
    encap = der(0x30, data_oid + der(0xA0, der(0x04, content)))
    body = der(0x02, b"\x01") + der(0x31, b"") + encap + der(0x31, b"")
    return der(0x30, signed_oid + der(0xA0, der(0x30, body)))


def tnef_rtf() -> bytes:
    def attr(level: int, name: int, kind: int, data: bytes) -> bytes:
        return (struct.pack("<BHHI", level, name, kind, len(data)) + data
                + struct.pack("<H", sum(data) & 0xFFFF))
    rtf = (rb"{\rtf1\ansi\ansicpg1251\deff0{\fonttbl{\f0 Calibri;}}\f0 "
           + b"".join(b"\\'" + f"{b:02x}".encode() if b > 127 else bytes([b])
                      for b in "Текст RTF: не работает Chat 2.2".encode("cp1251"))
           + rb"\par}")
    packed = compressed_rtf.compress(rtf)
    props = struct.pack("<IHHII", 1, 0x0102, 0x1009, 1, len(packed)) + packed
    props += b"\x00" * (-len(packed) % 4)
    out = struct.pack("<IH", 0x223E9F78, 1)
    out += attr(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += attr(1, 0x9003, 0x0006, props)
    return out


def tnef() -> bytes:
    def attr(level: int, name: int, kind: int, data: bytes) -> bytes:
        return (struct.pack("<BHHI", level, name, kind, len(data)) + data
                + struct.pack("<H", sum(data) & 0xFFFF))
    out = struct.pack("<IH", 0x223E9F78, 1)
    out += attr(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += attr(1, 0x800C, 0x0002, "Текст из TNEF: ошибка AgentZone.".encode("cp1251"))
    for name, data in (("screen.png", png(30, 20, 5)), ("config.xml", b"<config/>")):
        out += attr(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff" + b"\x00" * 8)
        out += attr(2, 0x8010, 0x0001, name.encode() + b"\x00")
        out += attr(2, 0x800F, 0x0006, data)
    return out


def images_and_html() -> None:
    shot = png(1280, 720, 7)
    jpeg = pil_image("JPEG", 800, 600)
    html = ("<html><body><p>Ошибка на экране:</p><img src=\"cid:shot1@x\" alt=\"экран\">"
            "<p>Шаги:</p><ol><li>Войти</li><li>Открыть <a href=\"https://omnivox.ru/q\">очередь"
            "</a></li></ol><ul><li>пункт</li></ul></body></html>")
    raw = (headers("HTML со скриншотом") + "Content-Type: multipart/related; boundary=r\r\n\r\n"
           "--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n--r\r\n"
           "Content-Type: image/png\r\nContent-ID: <shot1@x>\r\nContent-Transfer-Encoding: "
           f"base64\r\nContent-Disposition: inline\r\n\r\n{b64(shot)}\r\n--r--\r\n")
    add("html_cid_inline_image", raw, {
        "screenshot_names": ["part-3.png"], "screenshot_sources": ["inline image"],
        "screenshot_sizes": [[1280, 720]],
        "text_contains": ["Ошибка на экране:", "1. Войти",
                          "2. Открыть очередь (https://omnivox.ru/q)", "- пункт"],
        "html_present": True})
    data_uri = base64.b64encode(png(16, 16, 9)).decode()
    raw = (headers("data uri") + "Content-Type: text/html; charset=utf-8\r\n\r\n<p>См. "
           f"картинку</p><img src=\"data:image/png;base64,{data_uri}\"><script>alert(1)"
           "</script>\r\n")
    add("html_data_uri_image", raw, {"screenshot_sources": ["data: URI"],
                                     "screenshot_sizes": [[16, 16]],
                                     "html_excludes": ["<script", "alert"]})
    mixed("jpeg_named_png", "jpeg", "См.", [attachment("image/png", "; filename=shot.png", jpeg)],
          {"screenshot_types": ["image/jpeg"], "screenshot_sizes": [[800, 600]]})
    mixed("fake_png", "fake", "См.", [attachment("image/png", "; filename=shot.png",
                                                 b"MZ\x90\x00 this is an exe")],
          {"screenshot_names": [], "attachment_names": ["shot.png"],
           "warnings_contain": ["not one"]})
    mixed("octet_stream_image", "octet", "См.", [attachment(
        "application/octet-stream", "; filename=screenshot", pil_image("GIF", 50, 40))],
          {"screenshot_types": ["image/gif"], "screenshot_sizes": [[50, 40]]})
    mixed("duplicate_screenshots", "dup", "Дважды.", [
        attachment("image/png", "; filename=one.png", shot),
        attachment("image/png", "; filename=two.png", shot)],
          {"screenshot_names": ["one.png"], "warnings_contain": ["duplicate"]})
    mixed("over_screenshot_count", "many", "Много скриншотов.", [
        attachment("image/png", f"; filename=s{i:02d}.png", png(10 + i, 10, i))
        for i in range(22)], {"screenshot_count": 20, "attachment_count": 2,
                              "attachment_notes_contain": ["more than 20 screenshots"]})
    mixed("tracking_pixel", "pixel", "Текст.", [attachment("image/gif", "; filename=t.gif",
                                                          pil_image("GIF", 1, 1))],
          {"screenshot_names": [], "attachment_names": ["t.gif"]})
    mixed("other_formats", "formats", "Форматы.", [
        attachment("image/bmp", "; filename=a.bmp", pil_image("BMP", 30, 20)),
        attachment("image/webp", "; filename=a.webp", pil_image("WEBP", 31, 21)),
        attachment("image/tiff", "; filename=a.tif", pil_image("TIFF", 32, 22))],
          {"screenshot_sizes": [[30, 20], [31, 21], [32, 22]]})
    mixed("non_image_attachments", "files", "Файлы.", [
        attachment("application/pdf", "; filename=report.pdf", b"%PDF-1.7 ..."),
        attachment("application/zip", "; filename=logs.zip", b"PK\x03\x04zip"),
        "Content-Type: text/plain; charset=utf-8; name=agent.log\r\nContent-Disposition: "
        "attachment; filename=agent.log\r\n\r\nERROR line\r\n"],
          {"attachment_names": ["report.pdf", "logs.zip", "agent.log"], "screenshot_names": [],
           "text_excludes": ["ERROR line"]})


def kinds_and_auto() -> None:
    plain("tag_development", "[доработка] Не работает экспорт, добавьте CSV",
          "Не работает экспорт в Excel, добавьте CSV.\n",
          {"kind": "development_request", "kind_reason_contains": "[доработка]"})
    plain("tag_problem_en", "[problem] question about reports", "How to build a report?\n",
          {"kind": "problem", "priority": "P1"})
    plain("service_request_ru", "Вопрос по лицензиям",
          "Подскажите, как добавить лицензию на нового оператора?\n",
          {"kind": "service_request", "priority": "P3"})
    plain("service_request_urgent", "Срочно: вопрос",
          "Срочно подскажите, где найти документацию по API?\n",
          {"kind": "service_request", "priority": "P2"})
    plain("development_en", "Feature request", "It would be great to have dark mode. Please add"
          " it to AgentZone.\n", {"kind": "development_request", "priority": "P4",
                                  "language": "en"})
    plain("incident_en", "Error in chat", "One agent gets an error when closing a chat. "
          "Windows 11, Edge 120, OmniVOX Chat 2.4.1.\n",
          {"kind": "incident", "priority": "P2", "environment": {
              "os": "Windows", "os_version": "11", "browser": "Edge", "browser_version": "120",
              "product": "Chat", "product_version": "2.4.1"}, "missing": []})
    plain("problem_en_all_agents", "URGENT all agents down",
          "All agents are disconnected, the whole call center cannot work.\n",
          {"kind": "problem", "priority": "P1"})
    plain("no_keywords", "Hello", "Hello there.\n",
          {"kind": "incident", "kind_reason_contains": "default",
           "missing": ["os", "os_version", "product", "product_version", "browser",
                       "browser_version"]})
    plain("user_agent_pasted", "UA",
          "Ошибка. UA: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
          "like Gecko) Chrome/120.0.0.0 YaBrowser/24.1.0.0 Safari/537.36\nAgentZone 3.2\n",
          {"environment": {"os": "Windows", "os_version": "10", "browser": "Yandex Browser",
                           "browser_version": "24.1.0.0", "product": "AgentZone",
                           "product_version": "3.2"},
           "source_contains": {"browser": "user-agent"}})
    plain("free_text_astra", "Ошибка", "OmniVOX 3.2.1 on Astra 1.7, Firefox ESR 115\n",
          {"environment": {"os": "Astra Linux", "os_version": "1.7", "product_version": "3.2.1",
                           "browser": "Firefox", "browser_version": "115"},
           "missing": ["product"]})
    plain("linux_distros", "Distros", "Сервер RED OS 7.3, клиенты на ALT Linux 10 и "
          "CentOS 7.9; AgentZone 3.0.\nОпера 105\n",
          {"environment": {"os": "RED OS", "os_version": "7.3", "browser": "Opera",
                           "browser_version": "105"}})
    plain("labelled_en_server", "Setup", "Operating system: Windows Server 2019\n"
          "Web browser: Microsoft Edge 119\nProduct version: AgentZone 4.0.2\n",
          {"environment": {"os": "Windows", "os_version": "Server 2019", "browser": "Edge",
                           "browser_version": "119", "product": "AgentZone",
                           "product_version": "4.0.2"},
           "source_contains": {"os": "labelled line 'Operating system:'"}})
    plain("number_in_quote_only", "Re: ваша заявка", "Спасибо, всё работает.\n\n"
          "> Ваша заявка [OV-2026-000777] решена.\n",
          {"registration_number": "OV-2026-000777"})
    plain("auto_submitted_ooo", "Автоответ: Ошибка AgentZone", "Я в отпуске до 20 января.\n",
          {"is_auto_reply": True}, extra="Auto-Submitted: auto-replied\r\n")
    plain("x_autoreply", "Re: test", "Auto.\n", {"is_auto_reply": True},
          extra="X-Autoreply: yes\r\n")
    plain("precedence_bulk", "Newsletter", "News.\n", {"is_auto_reply": True},
          extra="Precedence: bulk\r\n")
    plain("list_id", "[list] digest", "List.\n", {"is_auto_reply": True},
          extra="List-Id: <users.lists.example.com>\r\nList-Unsubscribe: <mailto:u@x>\r\n")
    plain("exchange_oof", "Automatic reply: Chat issue", "I am out of the office.\n",
          {"is_auto_reply": True}, extra="X-Auto-Response-Suppress: All\r\n")
    plain("ooo_subject_only", "Out of Office: Re: [OV-2026-000100]", "Away.\n",
          {"is_auto_reply": True, "registration_number": "OV-2026-000100"})
    report_original = ("From: support@omnivox.ru\r\nTo: nobody@customer.ru\r\nSubject: "
                       "[OV-2026-000200] Ack\r\nMessage-ID: <ack200@omnivox.ru>\r\n\r\nAck.\r\n")
    raw = (headers("Undelivered Mail Returned to Sender", sender="MAILER-DAEMON@mx.customer.ru")
           + "Content-Type: multipart/report; report-type=delivery-status; boundary=rep\r\n"
           "\r\n--rep\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
           "--rep\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
           "Final-Recipient: rfc822; nobody@customer.ru\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           "--rep\r\nContent-Type: message/rfc822\r\n\r\n" + report_original + "--rep--\r\n")
    add("bounce_report_rfc822", raw, {"is_auto_reply": True, "bounce_original":
                                      "<ack200@omnivox.ru>", "attachment_names": []})
    raw = (headers("Delivery Status Notification (Failure)", sender="postmaster@customer.ru")
           + "Content-Type: multipart/report; report-type=delivery-status; boundary=rep\r\n"
           "\r\n--rep\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n--rep\r\nContent-Type: "
           "text/rfc822-headers\r\n\r\n" + report_original.split("\r\n\r\n")[0] + "\r\n"
           "--rep--\r\n")
    add("bounce_report_headers", raw, {"bounce_original": "<ack200@omnivox.ru>"})
    plain("bounce_plain_text", "Mail delivery failed: returning message to sender",
          "This message was created automatically by mail delivery software.\n\n"
          "------ This is a copy of the message, including all the headers. ------\n"
          "Message-ID: <ack300@omnivox.ru>\nSubject: [OV-2026-000300] Ack\n",
          {"is_auto_reply": True, "bounce_original": "<ack300@omnivox.ru>"},
          sender="Mail Delivery System <Mailer-Daemon@mx.customer.ru>")
    raw = (headers("Read: Ошибка") + "Content-Type: multipart/report; report-type=disposition-"
           "notification; boundary=mdn\r\n\r\n--mdn\r\nContent-Type: text/plain\r\n\r\nRead.\r\n"
           "--mdn\r\nContent-Type: message/disposition-notification\r\n\r\nDisposition: "
           "manual-action/MDN-sent-manually; displayed\r\n--mdn--\r\n")
    add("read_receipt", raw, {"is_auto_reply": True, "bounce": False})


def review_cases() -> None:
    """The reviewer's mails of November 2026, each pinned as the desk must read it."""
    add("utf7_lone_surrogates", headers("=?utf-7?Q?+2D0-?=") + "Content-Type: text/plain; "
        "charset=utf-7\r\nContent-Transfer-Encoding: 7bit\r\n\r\n+2D3YPQ-\r\n",
        {"subject": "\ufffd", "text": "\ufffd\ufffd"})
    add("utf7_surrogate_pair", headers("=?utf-7?Q?+2D3eAA-?=") + "Content-Type: text/plain; "
        "charset=utf-7\r\n\r\nOK +2D3eAA-\r\n", {"subject": "\U0001f600",
                                                   "text": "OK \U0001f600"})
    body = "Здравствуйте! Не работает AgentZone 4.1 у одного оператора.\n\n-- \nООО Ромашка"
    head = headers("Error") + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    # An MTA's footer in windows-1251 (NBSP, "№") after a UTF-8 body.
    add("utf8_stray_cp1251_byte", head.encode() + body.encode() + b"\xa0\xb9 1\r\n",
        {"new_text": "Здравствуйте! Не работает AgentZone 4.1 у одного оператора.",
         "signature": "-- \nООО Ромашка\u00a0№ 1", "language": "ru", "kind": "incident",
         "no_mojibake": True, "warnings_contain": ["not UTF-8"]})
    add("utf8_stray_byte_undeclared", (headers("Error") + "\r\n").encode()
        + "Здравствуйте, у нас ошибка в AgentZone 4.1 ".encode() + "ё".encode("cp1251"),
        {"text": "Здравствуйте, у нас ошибка в AgentZone 4.1 ё", "language": "ru",
         "no_mojibake": True})

    plain("labelled_unknown_answers_ru", "Не работает очередь",
          "Не работает очередь.\nОС: не знаю\nБраузер: последняя версия\n"
          "Система: зависла после обновления\nВерсия OmniVOX: AgentZone 4.1\n",
          {"missing": ["os", "os_version", "browser", "browser_version"],
           "environment": {"product": "AgentZone", "product_version": "4.1"},
           "warnings_contain": ["'ОС:' says 'не знаю'", "'Браузер:' says 'последняя версия'"]})
    plain("labelled_unknown_answers_en", "Queue", "The queue is stuck.\nOS: -\n"
          "Browser: Chrome 120\n", {"missing": ["os", "os_version", "product",
                                                  "product_version"],
                                      "warnings_contain": ["'OS:' says '-'"]})
    plain("labelled_bare_os_version", "Очередь", "Windows у всех.\nВерсия ОС: 11\n",
          {"environment": {"os": "Windows", "os_version": "11"},
           "source_contains": {"os_version": "labelled line 'Версия ОС:'"}})
    plain("product_version_before_name", "Ошибка", "Ошибка при входе.\n"
          "Версия OmniVOX: 4.1.2 (AgentZone)\n",
          {"environment": {"product": "AgentZone", "product_version": "4.1.2"}})
    plain("product_version_of_name_en", "Login", "Login fails in version 3.2.1 of "
          "AgentZone.\n", {"environment": {"product": "AgentZone",
                                            "product_version": "3.2.1"}})

    plain("thanks_before_versions_ru", "софтфон", "Добрый день!\nНе работает софтфон у "
          "оператора.\nЗаранее спасибо!\nВерсия ОС: Windows 10\nБраузер: Chrome 120\n"
          "Версия OmniVOX: AgentZone 4.1\n",
          {"signature": "", "kind": "incident", "missing": [], "environment": {
              "os": "Windows", "os_version": "10", "browser": "Chrome",
              "browser_version": "120", "product": "AgentZone", "product_version": "4.1"}})
    plain("thanks_before_request_en", "Login problem", "Hi team,\nThanks!\nAfter the update "
          "agents can't log in to AgentZone 4.1.\nWindows 10, Chrome 120\n",
          {"new_text_contains": ["agents can't log in to AgentZone 4.1."], "signature": "",
           "kind": "incident", "missing": [], "language": "en"})
    plain("versions_in_dash_signature", "Очередь", "Не обновляется очередь.\n-- \nИван "
          "Петров, ООО Ромашка\nAgentZone 4.1, Windows 11, Chrome 120\n",
          {"new_text": "Не обновляется очередь.", "signature_contains": ["ООО Ромашка"],
           "missing": []})
    plain("mobile_footer_is_not_the_os", "Очередь", "Не обновляется очередь у оператора."
          "\n\nGet Outlook for Android\n",
          {"signature": "Get Outlook for Android",
           "missing": ["os", "os_version", "product", "product_version", "browser",
                       "browser_version"]})

    plain("attribution_bottom_posted_en", "Re: Chat", "On Tue, Nov 24, 2026 at 5:00 PM "
          "Support <s@o.com> wrote:\n> Which browser?\n\nChrome 120 on Windows 11, still "
          "broken.\n", {"new_text": "Chrome 120 on Windows 11, still broken.",
                        "quoted_contains": ["> Which browser?"],
                        "environment": {"browser": "Chrome", "os_version": "11"}})
    plain("attribution_bottom_posted_ru", "Re: Чат", "24.11.2026 17:00, Поддержка пишет:\n"
          "> Какой браузер?\n\nChrome 120 на Windows 11, всё ещё не работает.\n",
          {"new_text": "Chrome 120 на Windows 11, всё ещё не работает.",
           "quoted_contains": ["> Какой браузер?"], "language": "ru"})

    plain("development_all_operators", "Feature request: export", "Hello,\nplease add a "
          "button to export call reports for all operators at once.\nIt would be great.\n",
          {"kind": "development_request", "priority": "P4"})
    plain("development_tag_not_working", "[доработка] отчёты",
          "Не работает выгрузка, добавьте кнопку.\n",
          {"kind": "development_request", "priority": "P4"})
    plain("incident_not_working_is_not_urgent", "Отчёт", "Не работает выгрузка отчёта у "
          "одного оператора.\n", {"kind": "incident", "priority": "P2"})

    plain("language_ru_latin_products", "x", "ОС: Astra Linux 1.7, браузер Firefox 115 ESR\n",
          {"language": "ru", "environment": {"os": "Astra Linux", "os_version": "1.7",
                                             "browser": "Firefox", "browser_version": "115"}})
    plain("language_ru_server_clients", "x", "Сервер: Windows Server 2019, клиенты на "
          "Windows 11 и Microsoft Edge 120\n", {"language": "ru"})

    plain("number_in_new_text_of_new_mail", "Новая проблема",
          "Похоже на [OV-2026-000100], но теперь другое: не работает чат.\n",
          {"registration_number": None})
    plain("number_in_quoted_outlook_subject", "RE: Ошибка", "Ещё вопрос по той же теме.\n\n"
          "From: OmniVOX Support <support@omnivox.ru>\nSent: Tuesday, November 24, 2026 "
          "5:00 PM\nTo: Ivan\nSubject: [OV-2026-000123] Ошибка\n\nГотово. См. [OV-2026-000999]"
          "\n", {"registration_number": "OV-2026-000123"})

    plain("macos_name_and_number", "x", "macOS Sonoma 14.2, Safari 17.2, OmniVOX Chat 2.4.1\n",
          {"environment": {"os": "macOS", "os_version": "14.2", "browser": "Safari",
                           "browser_version": "17.2", "product": "Chat",
                           "product_version": "2.4.1"}})
    plain("edge_user_agent_full_version", "x", "UA: Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
          " AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 "
          "Edg/120.0.2210.91\n", {"environment": {"browser": "Edge",
                                                  "browser_version": "120.0.2210.91"}})
    plain("firefox_esr_suffix", "x", "Firefox ESR 115.6.0esr на Astra Linux\n",
          {"environment": {"browser": "Firefox", "browser_version": "115.6.0"}})


def main() -> None:
    clients()
    charset_accidents()
    mime_breakage()
    images_and_html()
    kinds_and_auto()
    review_cases()
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.eml"):
        old.unlink()
    expected: dict[str, dict[str, object]] = {}
    for name, (raw, expect) in sorted(CORPUS.items()):
        (OUT / f"{name}.eml").write_bytes(raw)
        expected[name] = expect
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1,
                                                  sort_keys=True) + "\n", encoding="utf-8")
    print(f"{len(CORPUS)} messages written to {OUT}")


if __name__ == "__main__":
    main()
