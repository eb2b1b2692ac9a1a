"""HL7 v2 channel: the ER7 tokenizer and the mappings between HL7 v2 messages and the domain."""
