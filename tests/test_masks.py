"""A phone's mask is read off its E.164 digits: the same as parsing the number again."""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from backinstock.contacts import Channel, mask


def _parsed_mask(e164: str) -> str:
    number = phonenumbers.parse(e164)
    national = phonenumbers.national_significant_number(number)
    hidden = max(len(national) - 7, 1)
    return f"+{number.country_code} {national[:3]}{'*' * hidden}{national[3 + hidden :]}"


def test_every_region_s_example_numbers_mask_as_parsed() -> None:
    seen = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.VOIP):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
            assert mask(Channel.SMS, e164) == _parsed_mask(e164), e164
            seen += 1
    assert seen > 500
    assert mask(Channel.SMS, "+390612345678") == "+39 061***5678"  # Italy's leading zero
    assert mask(Channel.SMS, "+8613812345678") == "+86 138****5678"
