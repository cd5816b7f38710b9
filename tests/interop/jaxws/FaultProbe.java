// A JAX-WS client of stubs that `wsimport` generated from one of our served WSDLs, with no
// WS-Security handling: it calls WhoAmI unsigned and prints the SOAP fault it gets back, as the
// caller sees it. Used by tests/test_wsdl_stubs.py.
//
//   java FaultProbe WSDL_URL CA_PEM SERVICE_CLASS
//
// SERVICE_CLASS is the generated javax.xml.ws.Service subclass (the one annotated
// @WebServiceClient); its @WebEndpoint getter gives the port, whose whoAmI() is called.
// Prints fault_namespace=, fault_code= and fault_string= lines, or answer= when the call succeeds.

import java.io.FileInputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.net.URL;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import javax.xml.namespace.QName;
import javax.xml.soap.SOAPFault;
import javax.xml.ws.WebEndpoint;
import javax.xml.ws.soap.SOAPFaultException;

public class FaultProbe {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: FaultProbe WSDL_URL CA_PEM SERVICE_CLASS");
            System.exit(2);
        }
        trustOnly(args[1]);
        Class<?> serviceClass = Class.forName(args[2]);
        Object service = serviceClass.getConstructor(URL.class).newInstance(new URL(args[0]));
        Object port = null;
        for (Method getter : serviceClass.getMethods()) {
            if (getter.isAnnotationPresent(WebEndpoint.class) && getter.getParameterCount() == 0) {
                port = getter.invoke(service);
            }
        }
        if (port == null) {
            System.err.println("no @WebEndpoint getter in " + args[2]);
            System.exit(2);
        }
        try {
            Object answer = port.getClass().getMethod("whoAmI").invoke(port);
            System.out.println("answer=" + answer);
        } catch (InvocationTargetException error) {
            Throwable cause = error.getCause();
            if (!(cause instanceof SOAPFaultException)) {
                cause.printStackTrace();
                System.exit(1);
            }
            SOAPFault fault = ((SOAPFaultException) cause).getFault();
            QName code = fault.getFaultCodeAsQName();
            System.out.println("fault_namespace=" + code.getNamespaceURI());
            System.out.println("fault_code=" + code.getLocalPart());
            System.out.println("fault_string=" + fault.getFaultString());
        }
    }

    /** HTTPS to the test host: trust exactly the test CA. */
    private static void trustOnly(String caPem) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (FileInputStream in = new FileInputStream(caPem)) {
            X509Certificate ca = (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
            store.setCertificateEntry("ca", ca);
        }
        TrustManagerFactory factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        factory.init(store);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, factory.getTrustManagers(), null);
        HttpsURLConnection.setDefaultSSLSocketFactory(context.getSocketFactory());
    }
}
