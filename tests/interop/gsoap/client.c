/* A gSOAP client built from one of our served WSDLs (wsdl2h -c, soapcpp2 -c -C) with gSOAP's own
 * WS-Security plugin (plugin/wsseapi.c): it signs each request (RSA-SHA256, exclusive C14N, a
 * signed Timestamp and Body, the certificate as a BinarySecurityToken), calls the operation and
 * verifies the signed answer with the plugin's verifier against the CA file. Used by
 * tests/test_wsdl_stubs.py; the stub's own names (ns1__WhoAmI, soap_call___ns1__WhoAmI...) come
 * from the WSDL, so this file compiles only against stubs whose names are the operations'.
 *
 *   client URL CAFILE CERT KEY OPERATION      OPERATION: whoami | moneysupply | getbalance:ACCOUNT
 *
 * Prints key=value lines: the answer's fields, or fault=CODE and reason=TEXT, then
 * body_signed=0|1 timestamp_signed=N timestamp_fresh=0|1, and verified=1 when all hold.
 * An answer whose signature does not verify comes back as the plugin's own fault
 * (fault=wsse:FailedCheck, body_signed=0). Exit 0 when a signed answer (result or fault)
 * was verified, 1 otherwise.
 */
#include "soapH.h"
#include "plugin/wsseapi.h"
#include NSMAP_FILE

#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

static const char *WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";

static int report_verification(struct soap *soap)
{
  int body = soap_wsse_verify_body(soap) == SOAP_OK;  /* SOAP_OK when the Body was signed */
  int timestamp = (int)soap_wsse_verify_element(soap, WSU, "Timestamp");
  int fresh = soap_wsse_verify_Timestamp(soap) == SOAP_OK;
  printf("body_signed=%d\ntimestamp_signed=%d\ntimestamp_fresh=%d\n", body, timestamp, fresh);
  if (body < 1 || timestamp < 1 || !fresh)
    return 1;
  printf("verified=1\n");
  return 0;
}

int main(int argc, char **argv)
{
  struct soap *soap;
  FILE *file;
  X509 *cert;
  EVP_PKEY *key;
  int status;
  const char *operation;

  if (argc != 6)
  {
    fprintf(stderr, "usage: %s URL CAFILE CERT KEY OPERATION\n", argv[0]);
    return 2;
  }
  operation = argv[5];
  file = fopen(argv[3], "r");
  if (!file || !(cert = PEM_read_X509(file, NULL, NULL, NULL)))
  {
    fprintf(stderr, "cannot read the certificate %s\n", argv[3]);
    return 2;
  }
  fclose(file);
  file = fopen(argv[4], "r");
  if (!file || !(key = PEM_read_PrivateKey(file, NULL, NULL, NULL)))
  {
    fprintf(stderr, "cannot read the key %s\n", argv[4]);
    return 2;
  }
  fclose(file);

  soap = soap_new1(SOAP_XML_CANONICAL);
  soap_set_namespaces(soap, namespaces);
  if (soap_ssl_client_context(soap, SOAP_SSL_DEFAULT, NULL, NULL, argv[2], NULL, NULL))
  {
    soap_print_fault(soap, stderr);
    return 2;
  }
  soap->cafile = argv[2];  /* the CAs that the answer's signing certificate must chain to */
  soap_register_plugin(soap, soap_wsse);
  if (soap_wsse_add_Timestamp(soap, "Time", 300)
   || soap_wsse_add_BinarySecurityTokenX509(soap, "X509Token", cert)
   || soap_wsse_add_KeyInfo_SecurityTokenReferenceX509(soap, "#X509Token")
   || soap_wsse_sign_body(soap, SOAP_SMD_SIGN_RSA_SHA256, key, 0)
   || soap_wsse_sign_only(soap, "Time Body")
   || soap_wsse_verify_auto(soap, SOAP_SMD_NONE, NULL, 0))
  {
    soap_print_fault(soap, stderr);
    return 2;
  }

  if (!strcmp(operation, "whoami"))
  {
    struct ns1__WhoAmI request;
    struct ns1__WhoAmIResponse response;
    memset(&request, 0, sizeof(request));
    status = soap_call___ns1__WhoAmI(soap, argv[1], NULL, &request, &response);
    if (status == SOAP_OK && response.WhoAmIResult)
      printf("dn=%s\nservice=%s\n", response.WhoAmIResult->dn, response.WhoAmIResult->service);
  }
#ifdef BANK_OPERATIONS
  else if (!strcmp(operation, "moneysupply"))
  {
    struct ns1__MoneySupply request;
    struct ns1__MoneySupplyResponse response;
    memset(&request, 0, sizeof(request));
    status = soap_call___ns1__MoneySupply(soap, argv[1], NULL, &request, &response);
    if (status == SOAP_OK && response.MoneySupplyResult)
      printf("issued=%lld\noutstanding=%lld\n", (long long)response.MoneySupplyResult->issued,
             (long long)response.MoneySupplyResult->outstanding);
  }
  else if (!strncmp(operation, "getbalance:", 11))
  {
    struct ns1__GetBalance request;
    struct ns1__GetBalanceResponse response;
    memset(&request, 0, sizeof(request));
    request.account_USCOREid = (char *)operation + 11;
    status = soap_call___ns1__GetBalance(soap, argv[1], NULL, &request, &response);
    if (status == SOAP_OK && response.GetBalanceResult)
      printf("available=%lld\n", (long long)response.GetBalanceResult->available);
  }
#endif
  else
  {
    fprintf(stderr, "unknown operation %s\n", operation);
    return 2;
  }

  if (status != SOAP_OK)
  {
    const char **code = soap_faultcode(soap);
    const char **reason = soap_faultstring(soap);
    if (soap->error != SOAP_FAULT && soap->error != SOAP_SVR_FAULT && soap->error != SOAP_CLI_FAULT)
    {
      /* no answer at all: a transport or parse error */
      printf("error=%d\n", soap->error);
      soap_print_fault(soap, stdout);
      return 1;
    }
    printf("fault=%s\nreason=%s\n", code && *code ? *code : "", reason && *reason ? *reason : "");
  }
  status = report_verification(soap);
  soap_wsse_delete_Security(soap);
  soap_destroy(soap);
  soap_end(soap);
  soap_free(soap);
  return status;
}
